"""A workdir is one run: config guard, lock, clean errors, Ctrl-C, and nothing lost."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ripu_jax import errors
from ripu_jax import train
from ripu_jax.checkpoints import Checkpoints
from ripu_jax.metrics_log import read_metrics

from tiny_runs import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")


def snapshot(workdir):
  """What a refused rerun must leave untouched: checkpoints, ledger, metrics, config."""
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"))
  state = (sorted(os.listdir(checkpoints.directory)), checkpoints.restore_ledger(),
           read_metrics(workdir), open(os.path.join(workdir, "config.json")).read())
  checkpoints.close()
  return state


def run_main(workdir, *extra, env=None, config=DEMO + ":smoke"):
  args = [sys.executable, "-m", "ripu_jax.main", "--config", config, "--workdir", workdir,
          "--config.progress_bars=False", *extra]
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for_training(process, workdir, *, poll):
  """Returns once the run has logged training past step 4 (fails if it exits or stalls)."""
  start = time.time()
  while not any(r["kind"] == "train" and r["step"] >= 4 for r in read_metrics(workdir)):
    assert process.poll() is None, process.communicate()
    assert time.time() - start < 240
    time.sleep(poll)


# 1. Two configs in one workdir.
def test_a_rerun_with_another_config_is_refused_unless_the_change_is_allowed(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(), workdir)
  os.remove(os.path.join(workdir, "final.json"))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(workdir, "checkpoints", "10"))
  before = snapshot(workdir)
  changed = tiny_config(num_steps=12, **{"active.strategy": "random", "active.round_steps": (2, 9)})
  with pytest.raises(errors.WorkdirError) as error:
    train.train_and_evaluate(changed, workdir)
  message = str(error.value)
  for line in ("active.round_steps: [2, 5, 8] in the workdir, [2, 9] now",
               "active.strategy: 'ripu' in the workdir, 'random' now",
               "num_steps: 10 in the workdir, 12 now",
               "--allow_config_change=active.round_steps,active.strategy,num_steps"):
    assert line in message
  assert snapshot(workdir) == before
  # Extending the run is allowed when asked for; the change is recorded.
  summary = train.train_and_evaluate(tiny_config(num_steps=12), workdir,
                                     allow_config_change=("num_steps",))
  assert summary and read_metrics(workdir)[-1]["step"] == 12
  changes = [json.loads(line) for line in open(os.path.join(workdir, "config_changes.jsonl"))]
  assert changes == [{"step": 9, "time": changes[0]["time"],
                      "changes": {"num_steps": {"from": 10, "to": 12}}}]
  assert json.load(open(os.path.join(workdir, "config.json")))["num_steps"] == 12
  # Fields that never change a resumed run may always differ.
  train.train_and_evaluate(tiny_config(num_steps=12, progress_bars=True), workdir)


def test_a_run_recorded_before_fields_were_added_still_resumes(tmp_path):
  """Fields added since (at their default) are no difference; at another value they are."""
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(num_steps=9), workdir)
  path = os.path.join(workdir, "config.json")
  recorded = json.load(open(path))
  for group, name in (("optim", "name"), ("optim", "schedule"), ("optim", "betas")):
    del recorded[group][name]  # as a config.json written before these fields existed
  del recorded["acquisition"]
  with open(path, "w") as f:
    json.dump(recorded, f)
  assert train.train_and_evaluate(tiny_config(num_steps=11), workdir,
                                  allow_config_change=("num_steps",))
  recorded = json.load(open(path))
  del recorded["optim"]["name"]
  with open(path, "w") as f:
    json.dump(recorded, f)
  with pytest.raises(errors.WorkdirError, match="optim.name: '<absent>' in the workdir, "
                                                "'adam' now"):
    train.train_and_evaluate(tiny_config(num_steps=11, **{"optim.name": "adam"}), workdir)


# 2. Two processes on one workdir.
def test_a_second_process_is_refused_and_a_killed_ones_lock_does_not_block(tmp_path):
  workdir = str(tmp_path / "run")
  first = run_main(workdir, "--config.num_steps=400", "--config.checkpoint_every=2")
  wait_for_training(first, workdir, poll=0.2)
  os.kill(first.pid, signal.SIGSTOP)  # paused, as in a suspended terminal
  try:
    second = run_main(workdir, "--config.num_steps=400", "--config.checkpoint_every=2")
    out, err = second.communicate(timeout=240)
    assert second.returncode == 1
    assert f"in use by pid {first.pid} on host" in err and "Traceback" not in err
  finally:
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
  # The killed process's lock is released by the system: a rerun resumes at once, from
  # the first process's last checkpoint.
  latest = Checkpoints(os.path.join(workdir, "checkpoints")).latest_step()
  config = tiny_config(num_steps=400, checkpoint_every=2, **{"active.round_steps": (2,)})
  trainer = train.Trainer(config, workdir)
  assert trainer.step == latest and latest >= 2
  trainer.close()


# 5. An empty workdir.
def test_an_empty_workdir_is_refused(tmp_path):
  for workdir in ("", "  "):
    with pytest.raises(errors.WorkdirError, match="--workdir is empty"):
      train.Trainer(tiny_config(), workdir)


# 6. A failed first attempt.
def test_a_failed_first_attempt_does_not_keep_its_config(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.NonFiniteError, match="no checkpoint has been written yet"):
    train.train_and_evaluate(tiny_config(**{"optim.base_lr": 1e12}), workdir)
  assert json.load(open(os.path.join(workdir, "config.json")))["optim"]["base_lr"] == 1e12
  train.train_and_evaluate(tiny_config(num_steps=3, **{"active.round_steps": (2,)}), workdir)
  assert json.load(open(os.path.join(workdir, "config.json")))["optim"]["base_lr"] == 0.01


# 7 and 9. Errors before training: named fields, no traceback, no workdir left behind.
@pytest.mark.parametrize("args, message", [
    (["--config.eval.every=0"], "error: invalid config: eval.every must be >= 1, got 0"),
    (["--config.active.stratgy=random"],
     "error: --config.active.stratgy=random: the config has no field 'stratgy'; did you mean "
     "'strategy'?"),
    (["--config.model.name=segformer"], "error: invalid config: model.name must be one of"),
    (["--config.data.synthetic.height=8"], "error: invalid config: data.synthetic: synthetic "
     "images must be at least 32x32"),
    (["--config.data.source=gtav", "--config.data.data_dir=/nonexistent/data"],
     "python -m ripu_jax.data.prepare --dataset gtav"),
])
def test_user_errors_print_one_line_and_leave_no_workdir(tmp_path, args, message):
  workdir = str(tmp_path / "never")
  process = run_main(workdir, *args)
  out, err = process.communicate(timeout=240)
  assert process.returncode in (1, 2), (out, err)
  assert message in err and "Traceback" not in err, err
  assert not os.path.exists(workdir)


def test_a_config_file_that_raises_is_one_line(tmp_path):
  workdir = str(tmp_path / "never")
  process = run_main(workdir, config=DEMO + ":smok")
  out, err = process.communicate(timeout=240)
  assert process.returncode == 2, (out, err)
  assert err.strip().splitlines() == [
      f"error: flag --config={DEMO}:smok: Error whilst parsing config file: ValueError: "
      "unknown config argument(s) ['smok']; choose from ['smoke'], comma-separated"], err
  assert not os.path.exists(workdir)


def test_tracebacks_on_request(tmp_path):
  env = dict(os.environ, RIPU_JAX_TRACEBACK="1")
  process = run_main(str(tmp_path / "never"), "--config.eval.every=0", env=env)
  _, err = process.communicate(timeout=240)
  assert process.returncode != 0 and "Traceback" in err and "ConfigError" in err


def test_a_config_that_differs_from_the_workdirs_is_one_line_on_the_command_line(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(num_steps=3, **{"active.round_steps": (2,)}), workdir)
  process = run_main(workdir, "--config.num_steps=3", "--config.active.round_steps=(2,)",
                     "--config.checkpoint_every=3", "--config.active.strategy=random")
  _, err = process.communicate(timeout=240)
  assert process.returncode == 1 and "Traceback" not in err
  assert "active.strategy: 'ripu' in the workdir, 'random' now" in err


# 8. Ctrl-C.
def test_ctrl_c_stops_with_one_line_and_the_rerun_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  process = run_main(workdir, "--config.num_steps=400", "--config.checkpoint_every=1")
  wait_for_training(process, workdir, poll=0.05)
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=120)
  assert process.returncode == 130, err
  assert "Traceback" not in err and err.count("stopped (Ctrl-C)") == 1, err
  latest = Checkpoints(os.path.join(workdir, "checkpoints")).latest_step()
  assert latest is not None and latest >= 3
  config = tiny_config(num_steps=400, checkpoint_every=1, **{"active.round_steps": (2,)})
  trainer = train.Trainer(config, workdir)
  assert trainer.step == latest
  trainer.close()


# 10. A finished run's final.json; init_from never creates folders.
def test_rerunning_a_finished_run_leaves_final_json_as_it_was(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(num_steps=3, **{"active.round_steps": (2,)})
  train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, "final.json")
  before = (open(path).read(), os.stat(path).st_mtime_ns)
  time.sleep(0.01)
  train.train_and_evaluate(config, workdir)
  assert (open(path).read(), os.stat(path).st_mtime_ns) == before


def test_init_from_a_missing_run_creates_nothing(tmp_path):
  missing = str(tmp_path / "no_such_run")
  config = tiny_config(**{"model.init_from": missing})
  with pytest.raises(FileNotFoundError, match="init_from"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(missing) and not os.path.exists(str(tmp_path / "run"))
