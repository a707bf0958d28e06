"""One run over several processes (jax.distributed on loopback, 2 CPU devices per process).

Two processes with two devices each must train and select exactly as one process with four:
the same losses (to float rounding: the cross-process sums run in another order) and the
same ledger. A process killed mid-run stops the other with a message naming it, and rerunning
both resumes to the same ledger.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ripu_jax.checkpoints import Checkpoints
from ripu_jax.distributed import EXIT_PEER_LOST
from ripu_jax.metrics_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--config.num_steps=10", "--config.checkpoint_every=3",
       "--config.active.round_steps=(2,5,8)", "--config.train.batch_size=4",
       "--config.active.batch_size=4", "--config.eval.batch_size=4"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, devices, extra=(), process=None, port=None, num_processes=2,
           config="demo.py:smoke", run=tuple(RUN)):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  args = [sys.executable, "-m", "ripu_jax.main", "--config",
          os.path.join(ROOT, "configs", config), "--workdir", workdir,
          "--config.progress_bars=False", *run]
  if process is not None:
    args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
             f"--process_id={process}", "--heartbeat_timeout=5", "--distributed_timeout=120"]
  args += list(extra)  # last: overrides the defaults above
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _start_two(workdir, extras=((), ()), **kwargs):
  port = _free_port()
  return [_start(workdir, 2, extras[p], process=p, port=port, **kwargs) for p in (0, 1)]


def _finish(processes, timeout=600):
  outputs = []
  for process in processes:
    out, err = process.communicate(timeout=timeout)
    outputs.append((process.returncode, out, err))
  return outputs


def _ledger(workdir):
  return Checkpoints(os.path.join(workdir, "checkpoints")).restore_ledger()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The same run as 1 process x 4 devices and as 2 processes x 2 devices."""
  root = tmp_path_factory.mktemp("multihost")
  one, two = str(root / "one"), str(root / "two")
  single = _start(one, 4)
  (code, out, err), = _finish([single])
  assert code == 0, out + err
  results = _finish(_start_two(two))
  for code, out, err in results:
    assert code == 0, out + err
  return one, two, results


def test_two_processes_give_the_losses_and_ledger_of_one_process(runs):
  one, two, results = runs
  single, double = read_metrics(one), read_metrics(two)
  # Process 0 writes the run's one metrics file; the other prints nothing but errors.
  assert [(r["step"], r["kind"]) for r in single] == [(r["step"], r["kind"]) for r in double]
  for a, b in zip(single, double):
    if a["kind"] == "train":
      for term in ("source_ce", "target_ce", "total"):
        assert a[term] == pytest.approx(b[term], rel=1e-4, abs=1e-6)
    if a["kind"] == "eval":
      assert a["miou"] == pytest.approx(b["miou"], abs=1e-6)
  assert _ledger(one) == _ledger(two)
  (_, out0, _), (_, out1, _) = results
  assert "round 3/3 picked" in out0 and out1 == ""
  for number in (1, 2, 3):
    assert (sorted(os.listdir(os.path.join(one, "rounds", str(number), "masks")))
            == sorted(os.listdir(os.path.join(two, "rounds", str(number), "masks"))))
  assert os.path.exists(os.path.join(two, "final.json"))


VIEWAL = dict(config="viewal/synthetic.py:smoke", run=(
    "--config.train.batch_size=4", "--config.active.batch_size=4", "--config.eval.batch_size=4",
    "--config.data.viewal_synthetic.train_scenes=5"))


def test_viewal_over_two_processes_trains_and_picks_as_one(tmp_path):
  """Channel dropout in training and in the Monte-Carlo passes draws by the row of the global
  batch, so the processes' batches must stack into one process's; scenes are scored over all
  four devices of both processes."""
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  (code, out, err), = _finish([_start(one, 4, **VIEWAL)])
  assert code == 0, out + err
  for code, out, err in _finish(_start_two(two, **VIEWAL)):
    assert code == 0, out + err
  single, double = read_metrics(one), read_metrics(two)
  assert [(r["step"], r["kind"]) for r in single] == [(r["step"], r["kind"]) for r in double]
  first = [(a, b) for a, b in zip(single, double) if a["kind"] == "train"][0]
  assert first[0]["total"] > 0 and first[0]["total"] == pytest.approx(first[1]["total"],
                                                                       rel=1e-4)
  for a, b in zip(single, double):
    if a["kind"] == "train":  # later steps drift a little more: gradients of ~100 here
      assert a["total"] == pytest.approx(b["total"], rel=1e-3)
  ledger = _ledger(one)
  assert ledger == _ledger(two) and tuple(ledger.rounds_recorded) == (0, 1, 2)
  assert sorted(os.listdir(os.path.join(one, "rounds", "2", "masks"))) == sorted(
      os.listdir(os.path.join(two, "rounds", "2", "masks")))


def test_a_killed_process_stops_the_other_and_both_resume(runs, tmp_path):
  _, two, _ = runs
  workdir = str(tmp_path / "killed")
  processes = _start_two(workdir)
  start = time.time()
  while not any(r["kind"] == "train" and r["step"] >= 6 for r in read_metrics(workdir)):
    assert all(p.poll() is None for p in processes), _finish(processes)
    assert time.time() - start < 400, "timed out waiting for step 6"
    time.sleep(0.1)
  processes[1].send_signal(signal.SIGKILL)
  (code, _, err), _ = _finish(processes, timeout=200)
  assert code == EXIT_PEER_LOST, err
  assert "process 1 stopped answering" in err and "Rerun every process" in err
  for code, out, err in _finish(_start_two(workdir)):
    assert code == 0, out + err
  assert _ledger(workdir) == _ledger(two)
  steps = [(r["step"], r["kind"]) for r in read_metrics(workdir)]
  assert steps == [(r["step"], r["kind"]) for r in read_metrics(two)]


def test_processes_started_with_different_configs_are_refused(tmp_path):
  results = _finish(_start_two(str(tmp_path / "run"),
                               extras=((), ("--config.optim.base_lr=0.5",))))
  (code0, _, err0), (code1, _, err1) = results
  assert code1 == 1 and "optim.base_lr" in err1 and "same command line" in err1
  assert code0 != 0 and "another config" in err0
  assert not os.path.exists(str(tmp_path / "run" / "checkpoints"))


def test_a_batch_the_processes_cannot_share_is_refused(tmp_path):
  port = _free_port()
  processes = [_start(str(tmp_path / "run"), 1, ("--config.train.batch_size=3",), process=p,
                      port=port) for p in (0, 1)]
  for code, _, err in _finish(processes):
    assert code == 1 and "train.batch_size=3 is not divisible by the 2 processes" in err


def test_a_coordinator_that_never_answers_times_out_with_a_message(tmp_path):
  port = _free_port()
  process = _start(str(tmp_path / "run"), 1, ("--distributed_timeout=3",), process=1,
                   port=port)
  start = time.time()
  (code, _, err), = _finish([process], timeout=120)
  assert code == 1 and f"no coordinator answered at 127.0.0.1:{port} within 3 s" in err
  assert time.time() - start < 60
