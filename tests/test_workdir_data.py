"""Damaged inputs a run meets: labels without classes, broken prepared metadata, torn metrics.

Each case must end in a message that names the file, never in a silent loss or a traceback
deep inside TFDS or json.
"""

import io
import json
import logging
import os
import re
import shutil

import numpy as np
from PIL import Image
import pytest

from ripu_jax import data
from ripu_jax import metrics_log
from ripu_jax.data import labels
from ripu_jax.data import prepare as prepare_lib
from ripu_jax.data import reader
from ripu_jax.data import synthetic

RNG = np.random.default_rng(0)
TINY = synthetic.SyntheticConfig(seed=3, height=32, width=32, num_source_train=2,
                                 num_target_train=1, num_target_val=1)


def _write(path, payload: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(payload)


def _png(array) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------- a. labels


def test_label_without_valid_class_is_named_and_counted(tmp_path, caplog):
  root = str(tmp_path / "gtav")
  good = np.resize(np.array([7, 8, 11, 26, 0], np.uint8), (6, 10))
  void_only = np.resize(np.array([0, 1, 2, 3, 4, 5, 6], np.uint8), (6, 10))  # All map to 255.
  assert (labels.CITYSCAPES_LOOKUP[void_only] == 255).all()
  for number, ids in enumerate((good, void_only, good), start=1):
    _write(os.path.join(root, "images", f"{number:05d}.png"),
           _png(RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)))
    _write(os.path.join(root, "labels", f"{number:05d}.png"), _png(ids))
  out = str(tmp_path / "out")
  with caplog.at_level(logging.WARNING):
    prepare_lib.prepare("gtav", manual_dir=root, data_dir=out)
  bad_label = os.path.join(root, "labels", "00002.png")
  messages = _warnings(caplog)
  per_label = [m for m in messages if "the label" in m and "no valid class id" in m]
  assert len(per_label) == 1 and bad_label in per_label[0], messages
  assert "gtav train" in per_label[0] and "label-id file" in per_label[0]
  summary = [m for m in messages if "1 label(s) hold no valid class id" in m]
  assert len(summary) == 1 and bad_label in summary[0], messages
  assert "00001.png" not in summary[0] and "00003.png" not in summary[0]
  split = data.open_split("gtav", "train", out)  # Preparation went on: all three are there.
  assert len(split) == 3
  assert (split.label(1) == 255).all() and not split.class_presence[1].any()
  assert split.class_presence[0].any() and split.class_presence[2].any()


# ----------------------------------------------------------------------------- b. metadata


@pytest.fixture(scope="module")
def prepared_synthetic(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("prepared"))
  prepare_lib.prepare("synthetic", data_dir=out, config=TINY)
  return out


def _damaged_copy(prepared, tmp_path, filename, payload: bytes) -> str:
  out = str(tmp_path / "data")
  shutil.copytree(prepared, out)
  _write(os.path.join(reader.dataset_dir("synthetic", out, TINY), filename), payload)
  return out


def test_garbage_dataset_info_names_file_and_prepare_command(prepared_synthetic, tmp_path,
                                                            capsys):
  out = _damaged_copy(prepared_synthetic, tmp_path, "dataset_info.json", b"\x00garbage{")
  info = os.path.join(reader.dataset_dir("synthetic", out, TINY), "dataset_info.json")
  with pytest.raises(data.DatasetNotPreparedError) as error:
    data.open_split("synthetic", "source_train", out, config=TINY)
  message = str(error.value)
  assert f"{info} is not valid JSON" in message, message
  command = message.split("\n  ")[-1]
  assert command.startswith("python -m ripu_jax.data.prepare --dataset synthetic ")
  assert f"--data_dir {out}" in command and "--height 32" in command
  assert command.endswith("--overwrite")
  # Preparing again without --overwrite says the same instead of "ready" or a traceback.
  args = command.split()[3:]
  assert prepare_lib.main([a for a in args if a != "--overwrite"] + ["--no_progress"]) == 1
  err = capsys.readouterr().err
  assert info in err and "--overwrite" in err
  # The command of the message repairs the dataset.
  assert prepare_lib.main(args + ["--no_progress"]) == 0
  split = data.open_split("synthetic", "source_train", out, config=TINY)
  assert split[1]["image"].tobytes() == (
      synthetic.generate_example(TINY, "source_train", 1)["image"].tobytes())


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "metadata.json is not valid JSON"),
    (b'{"source_train": {"class_presence": [1, 2]}}', "malformed index of split 'source_train'"),
    (b'{"source_train": {"class_presence": [1], "label_shapes": [[32, 32]], '
     b'"pixel_counts": [0]}}', "indexes 1 examples of split 'source_train' but the split has 2"),
])
def test_damaged_class_index_names_metadata_file(prepared_synthetic, tmp_path, payload, reason):
  out = _damaged_copy(prepared_synthetic, tmp_path, "metadata.json", payload)
  with pytest.raises(data.DatasetNotPreparedError) as error:
    data.open_split("synthetic", "source_train", out, config=TINY)
  message = str(error.value)
  assert reason in message and "--seed 3" in message and "--overwrite" in message, message
  assert os.path.join(reader.dataset_dir("synthetic", out, TINY), "metadata.json") in message
  # Preparing without --overwrite does not call the damaged folder ready.
  with pytest.raises(data.DatasetNotPreparedError, match=re.escape(reason)):
    prepare_lib.prepare("synthetic", data_dir=out, config=TINY)


# ----------------------------------------------------------------------------- c. metrics


def test_malformed_metrics_line_is_kept_aside(tmp_path, caplog):
  workdir = str(tmp_path)
  path = os.path.join(workdir, metrics_log.METRICS_FILE)
  good = [{"step": s, "kind": "train", "total": float(s)} for s in (1, 2, 3, 4)]
  lines = [json.dumps(good[0]) + "\n", json.dumps(good[1]) + "\n",
           '{"step": 3, "kind": "tr\n',             # Damaged in the middle of the file.
           "\n",                                    # Blank: nothing to keep.
           json.dumps(good[2]) + "\n",
           "[1, 2]\n",                              # JSON, but no record.
           json.dumps(good[3]) + "\n",
           '{"step": 5, "kind": "tra']              # Torn last line of a killed process.
  with open(path, "w") as f:
    f.writelines(lines)
  assert metrics_log.read_metrics(workdir) == good
  with caplog.at_level(logging.WARNING):
    log = metrics_log.MetricsLog(workdir, resume_step=3, tensorboard=False)
  log.write(4, "train", {"total": 40.0})
  log.close()
  assert metrics_log.read_metrics(workdir) == good[:3] + [{"step": 4, "kind": "train",
                                                          "total": 40.0}]
  aside = path + metrics_log.MALFORMED_SUFFIX
  with open(aside) as f:
    kept = f.read().splitlines(keepends=True)
  assert kept[1::2] == [lines[2], lines[5]]  # Verbatim, each after a header with its number.
  assert "line 3," in kept[0] and "line 6," in kept[2] and "starting at step 3" in kept[0]
  messages = [m for m in _warnings(caplog) if aside in m]
  assert len(messages) == 1 and "lines 3, 6" in messages[0], _warnings(caplog)
  # The rewritten file is clean: resuming again sets nothing more aside.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    metrics_log.MetricsLog(workdir, resume_step=4, tensorboard=False).close()
  assert not _warnings(caplog)
  with open(aside) as f:
    assert f.read().splitlines(keepends=True) == kept


def test_read_metrics_skips_binary_garbage(tmp_path):
  path = os.path.join(str(tmp_path), metrics_log.METRICS_FILE)
  with open(path, "wb") as f:
    f.write(b'{"step": 1, "kind": "train"}\n\xff\xfe\x00\x00garbage\n\x00\x00\x00')
  assert metrics_log.read_metrics(str(tmp_path)) == [{"step": 1, "kind": "train"}]
  metrics_log.MetricsLog(str(tmp_path), resume_step=1, tensorboard=False).close()
  with open(path + metrics_log.MALFORMED_SUFFIX, "rb") as f:
    assert b"\xff\xfe\x00\x00garbage\n" in f.read()  # The torn NUL tail is dropped.
