"""Labels from annotators: the labelling tasks of a round, and importing the answers.

With `active.oracle = "annotators"` a run buys labels from people, not from the dataset.
After a selection round the trainer saves a checkpoint, writes the round's tasks and stops:

  rounds/<r>/masks/<name>.png      255 on the pixels to label (the round's query), 0 elsewhere
  rounds/<r>/tasks/images/<name>.png  the image at its label's full size (no crop, no resize)
  rounds/<r>/tasks/coco.json       the same queries as COCO instances (one RLE mask per image,
                                   category "query"), with the classes as categories
  rounds/<r>/tasks/labelmap.json   class id -> name and colour; the ids labels must use
  rounds/<r>/tasks/README.txt      what to do, in words

COCO is the exchange format that the annotation tools segmentation teams use import (CVAT,
Label Studio, Labelbox, Roboflow, Supervisely, V7), so the queries open as pre-drawn regions
in any of them. The answers come back as one PNG per image, `<name>.png`, holding class ids
(0..C-1, 255 = cannot tell) at the label's full size, which every tool can export.

`python -m ripu_jax.annotations import --workdir DIR --round R --labels DIR` checks every
file of the round (size, ids within the label space, colour maps, labels outside the query,
queried pixels left at 255) and only then writes `rounds/<r>/answers.npz` in one atomic
step: an import is whole or refused, never half applied. A rerun of the training command
takes the answers into the ledger (from answers.npz, or importing `rounds/<r>/labels/` itself
if the annotators saved their PNGs there) and trains on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from ripu_jax import exports
from ripu_jax.data import labels as labels_lib
from ripu_jax.errors import MissingFileError, UserError

ORACLES = ("ground_truth", "annotators")
TASKS_DIR = "tasks"
LABELS_DIR = "labels"  # where annotators may leave their PNGs for the rerun to import
ANSWERS_FILE = "answers.npz"
LABELMAP_FILE = "labelmap.json"
QUERY_CATEGORY = "query"
IGNORE = labels_lib.IGNORE_LABEL


class AnnotationError(UserError, ValueError):
  """Label files that cannot be imported; the message names each file and the fix."""


class LabelsNeeded(UserError):
  """The run waits for annotators: its message says what to label, where, and how to go on."""


@dataclasses.dataclass
class Query:
  """One image's part of a round: which pixels to label."""
  index: int
  name: str
  mask: np.ndarray  # bool [H, W]


# ----------------------------------------------------------------------------- exports

def coco_rle(mask: np.ndarray) -> dict:
  """COCO's uncompressed RLE of a bool mask: run lengths over the column-major pixels,
  starting with a (possibly empty) run of zeros."""
  flat = np.asarray(mask, bool).ravel(order="F")
  changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
  bounds = np.concatenate([[0], changes, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat.size and flat[0]:
    counts = [0] + counts
  return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _labelmap(label_space) -> dict:
  return {"label_space": label_space.name, "ignore": IGNORE,
          "classes": [{"id": int(c), "name": label_space.class_names[c],
                       "colour": [int(v) for v in label_space.palette[c]]}
                      for c in label_space.kept]}


def export_tasks(directory: str, round_number: int, queries: Sequence[Query],
                 image_of: Callable[[int], np.ndarray], label_space, command: str) -> str:
  """Writes `directory/tasks/` (images, coco.json, labelmap.json, README.txt) beside the query
  masks the round exported under `directory/masks/`; returns the README's text."""
  tasks = os.path.join(directory, TASKS_DIR)
  images_dir = os.path.join(tasks, "images")
  os.makedirs(images_dir, exist_ok=True)
  classes = _labelmap(label_space)
  categories = [{"id": c["id"] + 1, "name": c["name"], "supercategory": "class"}
                for c in classes["classes"]]
  query_id = label_space.num_classes + 1
  categories.append({"id": query_id, "name": QUERY_CATEGORY, "supercategory": "task"})
  coco_images, annotations = [], []
  for number, query in enumerate(queries, start=1):
    height, width = query.mask.shape
    file_name = exports.safe_name(query.name) + ".png"
    image = np.asarray(image_of(query.index), np.uint8)
    if image.shape[:2] != (height, width):
      image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    Image.fromarray(image).save(os.path.join(images_dir, file_name))
    coco_images.append({"id": number, "file_name": f"images/{file_name}", "height": height,
                        "width": width})
    rows, cols = np.nonzero(query.mask)
    if len(rows):
      annotations.append({
          "id": number, "image_id": number, "category_id": query_id, "iscrowd": 1,
          "segmentation": coco_rle(query.mask), "area": int(len(rows)),
          "bbox": [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1),
                   int(rows.max() - rows.min() + 1)]})
  coco = {"info": {"description": f"ripu_jax round {round_number}: label the pixels of each "
                                  f"'{QUERY_CATEGORY}' region; class ids in {LABELMAP_FILE}"},
          "images": coco_images, "annotations": annotations, "categories": categories}
  exports.write_json(os.path.join(tasks, "coco.json"), coco)
  exports.write_json(os.path.join(tasks, LABELMAP_FILE), classes)
  ids = ", ".join(f"{c['id']} {c['name']}" for c in classes["classes"])
  pixels = sum(int(q.mask.sum()) for q in queries)
  text = (
      f"Round {round_number}: label {pixels} pixels in {len(queries)} images.\n"
      f"Each image is in {tasks}/images, the pixels to label are white in "
      f"{directory}/masks/<name>.png ({tasks}/coco.json holds the same regions for "
      "annotation tools that import COCO).\n"
      f"Save one single-channel PNG per image, <name>.png at the image's size, holding class "
      f"ids ({ids}) on the queried pixels and {IGNORE} where you cannot tell; other pixels "
      "are ignored.\n"
      f"Put them in {os.path.join(directory, LABELS_DIR)}/ and rerun:\n  {command}\n"
      f"or, from another folder: python -m ripu_jax.annotations import --workdir "
      f"{os.path.dirname(os.path.dirname(directory))} --round {round_number} --labels DIR\n")
  with open(os.path.join(tasks, "README.txt"), "w") as f:
    f.write(text)
  return text


# ----------------------------------------------------------------------------- imports

def read_queries(workdir: str, round_number: int) -> list[Query]:
  """The round's images and query masks, as the trainer exported them."""
  directory = exports.round_dir(workdir, round_number)
  picks = os.path.join(directory, "picks.json")
  if not os.path.exists(picks):
    rounds = sorted(os.listdir(os.path.join(workdir, "rounds"))) if os.path.isdir(
        os.path.join(workdir, "rounds")) else []
    raise MissingFileError(f"{workdir} has no round {round_number} ({picks} is missing); its "
                           f"rounds are {rounds or 'none yet'}")
  with open(picks) as f:
    images = json.load(f)["images"]
  queries = []
  for image in images:
    path = os.path.join(directory, "masks", exports.safe_name(image["name"]) + ".png")
    if not os.path.exists(path):
      raise MissingFileError(f"the query mask {path} is missing; rerun the training command "
                             "to export the round again")
    queries.append(Query(int(image["index"]), image["name"],
                         np.asarray(Image.open(path)) > 0))
  return queries


def _read_labelmap(workdir: str, round_number: int) -> dict:
  path = os.path.join(exports.round_dir(workdir, round_number), TASKS_DIR, LABELMAP_FILE)
  if not os.path.exists(path):
    raise MissingFileError(f"{path} is missing: round {round_number} was not exported for "
                           "annotators (active.oracle='annotators')")
  with open(path) as f:
    return json.load(f)


def _decode_ids(path: str, labelmap: dict, from_colours: bool) -> tuple[np.ndarray | None, str]:
  """(uint8 [H, W] ids, "") or (None, what is wrong and how to fix it)."""
  try:
    with Image.open(path) as image:
      mode = image.mode
      array = np.asarray(image)
  except Exception as err:  # PIL raises several types for damaged files.
    return None, f"cannot be read as an image ({err}); save it again as PNG"
  if mode in ("RGB", "RGBA"):
    if not from_colours:
      return None, (f"holds {mode} colours, not class ids: save a single-channel PNG whose "
                    f"values are the ids of {LABELMAP_FILE}, or import with --from_colours "
                    "to map the classes' colours (that file's 'colour') to ids")
    colours = {tuple(c["colour"]): c["id"] for c in labelmap["classes"]}
    rgb = array[..., :3].reshape(-1, 3)
    found, inverse = np.unique(rgb, axis=0, return_inverse=True)
    table = np.array([colours.get(tuple(int(v) for v in colour),
                                  IGNORE if tuple(colour) == (0, 0, 0) else -1)
                      for colour in found])
    unknown = found[table < 0]
    if len(unknown):
      return None, (f"holds colours that are no class's colour, e.g. "
                    f"{[tuple(int(v) for v in c) for c in unknown[:3]]}; use the colours of "
                    f"{LABELMAP_FILE} (black = cannot tell)")
    return table[inverse.ravel()].reshape(array.shape[:2]).astype(np.uint8), ""
  if mode not in ("L", "P", "I", "I;16") or array.ndim != 2:
    return None, (f"is a {mode} image; save a single-channel (8-bit grey or palette) PNG of "
                  "class ids")
  return array, ""


@dataclasses.dataclass
class ImportReport:
  """What an import found, per round: files read, pixels taken, and what was off."""
  images: int = 0
  labelled: int = 0  # queried pixels given a class
  cannot_tell: int = 0  # queried pixels left at 255
  outside: int = 0  # labelled pixels outside the query, ignored
  files_outside: int = 0


def read_answers(workdir: str, round_number: int, labels_dir: str, *,
                 from_colours: bool = False) -> tuple[dict[int, tuple], ImportReport]:
  """Checks every label file of a round; returns ({image index: (pixels, values)}, report).

  Raises AnnotationError naming every bad or missing file (nothing is written)."""
  queries = read_queries(workdir, round_number)
  labelmap = _read_labelmap(workdir, round_number)
  allowed = np.zeros(256, bool)
  allowed[[c["id"] for c in labelmap["classes"]]] = True
  allowed[IGNORE] = True
  if not os.path.isdir(labels_dir):
    raise MissingFileError(f"the labels folder {labels_dir} does not exist")
  answers, problems, report = {}, [], ImportReport()
  for query in queries:
    path = os.path.join(labels_dir, exports.safe_name(query.name) + ".png")
    if not os.path.exists(path):
      problems.append(f"{path}: missing (the labels of image {query.name!r})")
      continue
    ids, problem = _decode_ids(path, labelmap, from_colours)
    if ids is None:
      problems.append(f"{path}: {problem}")
      continue
    if ids.shape != query.mask.shape:
      problems.append(f"{path}: is {ids.shape[1]}x{ids.shape[0]} (width x height), the image's "
                      f"label is {query.mask.shape[1]}x{query.mask.shape[0]}; label the image "
                      "as exported in tasks/images, without cropping or resizing")
      continue
    bad = ~allowed[np.clip(ids, 0, 255)] | (ids > 255) | (ids < 0)
    if bad.any():
      values = np.unique(ids[bad])
      problems.append(
          f"{path}: {int(bad.sum())} pixels hold ids {values[:8].tolist()} outside the label "
          f"space {labelmap['label_space']!r} (ids {[c['id'] for c in labelmap['classes']]}, "
          f"{IGNORE} = cannot tell); see tasks/{LABELMAP_FILE}")
      continue
    ids = ids.astype(np.uint8)
    pixels = np.flatnonzero(query.mask)
    values = ids.ravel()[pixels]
    outside = int(((ids != IGNORE) & ~query.mask).sum())
    report.images += 1
    report.outside += outside
    report.files_outside += bool(outside)
    report.cannot_tell += int((values == IGNORE).sum())
    report.labelled += int((values != IGNORE).sum())
    answers[query.index] = (pixels.astype(np.int32), values)
  if problems:
    raise AnnotationError(
        f"round {round_number}: {len(problems)} of {len(queries)} label files cannot be "
        "imported; nothing was imported:\n  " + "\n  ".join(problems))
  return answers, report


def describe(report: ImportReport, round_number: int) -> str:
  lines = [f"round {round_number}: {report.images} images, {report.labelled} queried pixels "
           f"labelled, {report.cannot_tell} left at {IGNORE} (cannot tell)"]
  if report.outside:
    lines.append(f"warning: {report.outside} labelled pixels in {report.files_outside} files "
                 "lie outside the queried pixels and are ignored (only the query was bought)")
  return "\n".join(lines)


def write_answers(workdir: str, round_number: int, answers: dict[int, tuple]) -> str:
  """rounds/<r>/answers.npz in one atomic step."""
  indices = np.array(sorted(answers), np.int64)
  sizes = np.array([len(answers[i][0]) for i in indices], np.int64)
  path = os.path.join(exports.round_dir(workdir, round_number), ANSWERS_FILE)
  with open(path + ".tmp", "wb") as f:
    np.savez(f, indices=indices, offsets=np.concatenate([[0], np.cumsum(sizes)]),
             pixels=np.concatenate([answers[i][0] for i in indices] + [np.zeros(0, np.int32)]),
             values=np.concatenate([answers[i][1] for i in indices] + [np.zeros(0, np.uint8)]))
  os.replace(path + ".tmp", path)
  return path


def load_answers(workdir: str, round_number: int) -> dict[int, tuple] | None:
  """{image index: (pixels, values)} of an imported round, or None if not imported."""
  path = os.path.join(exports.round_dir(workdir, round_number), ANSWERS_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as data:
    offsets = data["offsets"]
    return {int(i): (data["pixels"][offsets[k]:offsets[k + 1]],
                     data["values"][offsets[k]:offsets[k + 1]])
            for k, i in enumerate(data["indices"])}


def import_labels(workdir: str, round_number: int, labels_dir: str, *,
                  from_colours: bool = False) -> ImportReport:
  """Checks a round's label files and stores them for the run (all or nothing)."""
  answers, report = read_answers(workdir, round_number, labels_dir, from_colours=from_colours)
  write_answers(workdir, round_number, answers)
  return report


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ripu_jax.annotations",
      description="Import annotators' label PNGs for a round of a run that waits for them.")
  commands = parser.add_subparsers(dest="command", required=True)
  importing = commands.add_parser("import", help="check and store a round's label PNGs")
  importing.add_argument("--workdir", required=True)
  importing.add_argument("--round", type=int, required=True)
  importing.add_argument("--labels", required=True,
                         help="folder of <name>.png files holding class ids")
  importing.add_argument("--from_colours", action="store_true",
                         help="the PNGs are RGB colour maps in the label space's colours")
  args = parser.parse_args(argv)
  try:
    report = import_labels(args.workdir, args.round, args.labels,
                           from_colours=args.from_colours)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  print(describe(report, args.round))
  print(f"stored in {os.path.join(exports.round_dir(args.workdir, args.round), ANSWERS_FILE)}; "
        "rerun the training command to continue")
  return 0


if __name__ == "__main__":
  sys.exit(main())
