"""Labels from annotators: the ledger's answers, the tasks, the import's checks, and a scripted
annotator that answers from the ground truth reproducing the ground-truth run exactly."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from ripu_jax import annotations
from ripu_jax import config_lib
from ripu_jax import exports
from ripu_jax import train
from ripu_jax.checkpoints import Checkpoints
from ripu_jax.data import catalog
from ripu_jax.ledger import LabelLedger
from ripu_jax.metrics_log import read_metrics

from tiny_runs import tiny_config

ANSWER_KEYS = ("answer_records", "answer_pixels", "answer_values")


def rle_decode(rle):
  """COCO's uncompressed RLE, decoded the plain way: alternate runs of 0 and 1, column-major."""
  height, width = rle["size"]
  flat, value = [], 0
  for count in rle["counts"]:
    flat += [value] * count
    value = 1 - value
  return np.array(flat, bool).reshape(width, height).T


def test_coco_rle_against_a_plain_decoder():
  rng = np.random.default_rng(0)
  for mask in (rng.random((7, 5)) < 0.3, np.ones((3, 4), bool), np.zeros((2, 2), bool)):
    rle = annotations.coco_rle(mask)
    assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
    np.testing.assert_array_equal(rle_decode(rle), mask)
  # Hand case: column-major [[0, 1], [1, 1]] -> 0, 1, 1, 1 -> one 0, three 1s.
  assert annotations.coco_rle(np.array([[0, 1], [1, 1]], bool))["counts"] == [1, 3]
  assert annotations.coco_rle(np.array([[1, 0]], bool))["counts"] == [0, 1, 1]


def test_ledger_answers_round_masks_and_state():
  ledger = LabelLedger([(10, 10), (6, 6)], label_radius=1, suppress_radius=2)
  ledger.record(1, 0, [[2, 2]])
  ledger.record(2, 0, [[7, 7]])
  mask = np.zeros((6, 6), bool)
  mask[0, :3] = True
  ledger.record_mask(2, 1, mask)
  first = np.zeros((10, 10), bool)
  first[1:4, 1:4] = True
  np.testing.assert_array_equal(ledger.round_mask(1, 0), first)
  np.testing.assert_array_equal(ledger.round_mask(2, 0), np.roll(first, 5, (0, 1)))
  np.testing.assert_array_equal(ledger.round_mask(2, 1), mask)
  assert ledger.pending() == {1: [0], 2: [0, 1]}
  pixels = np.flatnonzero(first)
  ledger.record_answers(1, 0, pixels, np.arange(9, dtype=np.uint8))
  with pytest.raises(ValueError, match="already recorded"):
    ledger.record_answers(1, 0, pixels, np.arange(9, dtype=np.uint8))
  with pytest.raises(ValueError, match="another query"):
    ledger.record_answers(2, 0, pixels, np.arange(9, dtype=np.uint8))
  ledger.record_answers(2, 1, np.flatnonzero(mask), np.array([3, 255, 4], np.uint8))
  assert ledger.pending() == {2: [0]}
  label = ledger.bought_label(0)
  assert (label[first] == np.arange(9)).all() and (label[~first] == 255).all()
  np.testing.assert_array_equal(ledger.bought_labels[1][0, :4], [3, 255, 4, 255])
  restored = LabelLedger.from_state(ledger.state())
  assert restored == ledger and restored.pending() == {2: [0]}
  np.testing.assert_array_equal(restored.bought_label(1), ledger.bought_label(1))
  # A state saved before answers existed still restores (no answers, all pending).
  old = {k: v for k, v in ledger.state().items() if k not in ANSWER_KEYS}
  assert LabelLedger.from_state(old).pending() == {1: [0], 2: [0, 1]}


def _ground_truth(config):
  """image index -> the run's ground-truth label (train ids, 255 = ignore)."""
  split = train.build_splits(config).target_train
  table = catalog.label_map(config.data.target, config_lib.label_space(config))
  return lambda index: table[split.label(index)]


def _write_pngs(folder, names_and_labels):
  os.makedirs(folder, exist_ok=True)
  for name, label in names_and_labels:
    Image.fromarray(np.asarray(label, np.uint8)).save(
        os.path.join(folder, exports.safe_name(name) + ".png"))


def _round_images(workdir, round_number):
  with open(os.path.join(exports.round_dir(workdir, round_number), "picks.json")) as f:
    return [(image["index"], image["name"]) for image in json.load(f)["images"]]


def _train_losses(workdir):
  return [(r["step"], r["total"]) for r in read_metrics(workdir) if r["kind"] == "train"]


def _evals(workdir):
  return [(r["step"], r["miou"], r["labelled_fraction"]) for r in read_metrics(workdir)
          if r["kind"] == "eval"]


def test_scripted_annotator_reproduces_the_ground_truth_run(tmp_path, capsys):
  truth_dir, asked_dir = str(tmp_path / "truth"), str(tmp_path / "asked")
  truth = train.train_and_evaluate(tiny_config(), truth_dir)
  config = tiny_config(**{"active.oracle": "annotators"})
  ground_truth = _ground_truth(config)
  answered = []
  for attempt in range(5):
    summary = train.train_and_evaluate(config, asked_dir)
    if summary is not None:
      break
    waiting = capsys.readouterr().out
    round_number = len(answered) + 1
    assert f"Round {round_number}: label" in waiting and "waiting for labels" in waiting
    assert not os.path.exists(os.path.join(asked_dir, "final.json"))
    out = exports.round_dir(asked_dir, round_number)
    tasks = os.path.join(out, annotations.TASKS_DIR)
    with open(os.path.join(tasks, "coco.json")) as f:
      coco = json.load(f)
    images = _round_images(asked_dir, round_number)
    assert len(coco["images"]) == len(images) == len(os.listdir(os.path.join(tasks, "images")))
    queries = {q.index: q for q in annotations.read_queries(asked_dir, round_number)}
    for annotation in coco["annotations"]:  # the COCO regions are the query masks
      name = coco["images"][annotation["image_id"] - 1]["file_name"]
      index = next(i for i, n in images if "images/" + exports.safe_name(n) + ".png" == name)
      np.testing.assert_array_equal(rle_decode(annotation["segmentation"]),
                                    queries[index].mask)
    # The annotator labels whole images: pixels outside the query are ignored, with a count.
    labels = [(name, ground_truth(index)) for index, name in images]
    if round_number == 2:  # by the import command; other rounds by the rerun itself
      folder = str(tmp_path / "from_elsewhere")
      _write_pngs(folder, labels)
      assert annotations.main(["import", "--workdir", asked_dir, "--round", "2",
                               "--labels", folder]) == 0
      printed = capsys.readouterr().out
      assert "lie outside the queried pixels and are ignored" in printed
    else:
      _write_pngs(os.path.join(out, annotations.LABELS_DIR), labels)
    answered.append(round_number)
  assert answered == [1, 2, 3] and summary is not None
  assert summary["miou"] == truth["miou"]
  assert _train_losses(asked_dir) == _train_losses(truth_dir)
  assert _evals(asked_dir) == _evals(truth_dir)
  asked = Checkpoints(os.path.join(asked_dir, "checkpoints")).restore_ledger()
  expected = Checkpoints(os.path.join(truth_dir, "checkpoints")).restore_ledger()
  asked_state, expected_state = asked.state(), expected.state()
  for key in expected_state:
    if key not in ANSWER_KEYS:
      np.testing.assert_array_equal(asked_state[key], expected_state[key])
  assert not asked.pending()
  for index in range(asked.num_images):
    mask = asked.labeled_mask(index)
    bought = asked.bought_label(index)
    np.testing.assert_array_equal(bought[mask], ground_truth(index)[mask])
    assert (bought[~mask] == 255).all()


@pytest.fixture(scope="module")
def waiting_run(tmp_path_factory):
  """A run stopped at its first round, waiting for labels."""
  workdir = str(tmp_path_factory.mktemp("waiting") / "run")
  config = tiny_config(**{"active.oracle": "annotators", "num_steps": 4,
                          "active.round_steps": (2,)})
  assert train.train_and_evaluate(config, workdir) is None
  images = _round_images(workdir, 1)
  truth = _ground_truth(config)
  return workdir, [(name, truth(index)) for index, name in images]


def test_bad_label_files_are_named_with_the_fix_and_nothing_is_imported(waiting_run,
                                                                        tmp_path):
  workdir, labels = waiting_run
  (first, first_label), (second, second_label) = labels[0], labels[1]
  folder = str(tmp_path / "bad")
  _write_pngs(folder, [(first, first_label[:-1]), (second, np.full_like(second_label, 40))])
  for name, _ in labels[2:]:
    _write_pngs(folder, [(name, np.zeros_like(first_label))])
  answers = os.path.join(exports.round_dir(workdir, 1), annotations.ANSWERS_FILE)
  with pytest.raises(annotations.AnnotationError) as caught:
    annotations.import_labels(workdir, 1, folder)
  message = str(caught.value)
  assert exports.safe_name(first) + ".png: is " in message and "without cropping" in message
  assert exports.safe_name(second) + ".png: " in message and "ids [40]" in message
  assert "nothing was imported" in message and not os.path.exists(answers)
  # An RGB colour map: refused with the fix; imported with --from_colours.
  space = config_lib.label_space(tiny_config())
  colours = [(name, space.colorize(label)) for name, label in labels]
  rgb_folder = str(tmp_path / "rgb")
  os.makedirs(rgb_folder)
  for name, colour in colours:
    Image.fromarray(colour).save(os.path.join(rgb_folder, exports.safe_name(name) + ".png"))
  with pytest.raises(annotations.AnnotationError, match="RGB colours, not class ids.*"
                     "--from_colours"):
    annotations.import_labels(workdir, 1, rgb_folder)
  assert not os.path.exists(answers)
  os.remove(os.path.join(rgb_folder, exports.safe_name(first) + ".png"))
  with pytest.raises(annotations.AnnotationError, match="missing"):
    annotations.import_labels(workdir, 1, rgb_folder, from_colours=True)
  Image.fromarray(colours[0][1]).save(os.path.join(rgb_folder, exports.safe_name(first) + ".png"))
  report = annotations.import_labels(workdir, 1, rgb_folder, from_colours=True)
  assert report.images == len(labels) and os.path.exists(answers)
  loaded = annotations.load_answers(workdir, 1)
  for query in annotations.read_queries(workdir, 1):
    truth = dict(labels)[query.name]
    np.testing.assert_array_equal(loaded[query.index][1], truth[query.mask])
  os.remove(answers)


def test_import_errors_for_an_unknown_round_and_folder(waiting_run, tmp_path, capsys):
  workdir, _ = waiting_run
  assert annotations.main(["import", "--workdir", workdir, "--round", "7", "--labels",
                           str(tmp_path)]) == 1
  assert "has no round 7" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="does not exist"):
    annotations.import_labels(workdir, 1, str(tmp_path / "nowhere"))


def test_bad_oracle_is_refused():
  config = tiny_config(**{"active.oracle": "crowd"})
  with pytest.raises(ValueError, match="active.oracle must be one of"):
    config_lib.validate(config)
