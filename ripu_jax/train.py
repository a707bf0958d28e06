"""The RIPU trainer: source + target batches, selection rounds, checkpoints, evaluation.

`train_and_evaluate(config, workdir)` runs a config from `configs/` to the end, resuming
from `workdir` if it holds a checkpoint. Everything that defines the budget lives in the
label ledger (`ripu_jax.ledger`), which is checkpointed right after every selection round;
a rerun after a crash redoes at most the work since the last checkpoint, and redoes it
identically (seeded data order, restored iterators, deterministic selection).

workdir layout: checkpoints/, metrics.jsonl, tensorboard/, rounds/<r>/ (see
`ripu_jax.exports`), config.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from ripu_jax import acquisition
from ripu_jax import config_lib
from ripu_jax import evaluation
from ripu_jax import exports
from ripu_jax import models
from ripu_jax import optim
from ripu_jax.checkpoints import Checkpoints
from ripu_jax.data import pipeline
from ripu_jax.data import reader
from ripu_jax.data import synthetic
from ripu_jax.ledger import LabelLedger
from ripu_jax.metrics_log import MetricsLog, read_metrics
from ripu_jax.train_step import make_train_step

CONFIG_FILE = "config.json"


class Splits(NamedTuple):
  source: Any  # None for the source-free objective
  target_train: Any
  target_val: Any


class AllLabeled:
  """Labelled-mask view that marks every target pixel labelled (full supervision)."""

  def __init__(self, split):
    self._split = split

  def __len__(self) -> int:
    return len(self._split)

  def __getitem__(self, index: int) -> np.ndarray:
    return np.ones(self._split.label_shape(index), bool)


def build_splits(config: ml_collections.ConfigDict) -> Splits:
  """Opens the configured datasets; a missing one raises with how to prepare it."""
  data = config.data
  needs_source = config.train.objective != "source_free"
  if data.target == "synthetic" or (needs_source and data.source == "synthetic"):
    fields = {k: v for k, v in data.synthetic.items() if k != "prepared"}
    synthetic_config = synthetic.SyntheticConfig(**fields)

  def open_synthetic(split):
    if data.synthetic.prepared:
      return reader.open_split("synthetic", split, data.data_dir, config=synthetic_config)
    return synthetic.SyntheticSplit(synthetic_config, split)

  try:
    source = None
    if needs_source:
      source = (open_synthetic(synthetic.SOURCE_TRAIN) if data.source == "synthetic" else
                reader.open_split(data.source, "train", data.data_dir))
    if data.target == "synthetic":
      target_train = open_synthetic(synthetic.TARGET_TRAIN)
      target_val = open_synthetic(synthetic.TARGET_VAL)
    else:
      target_train = reader.open_split(data.target, "train", data.data_dir)
      target_val = reader.open_split(data.target, "val", data.data_dir)
  except reader.DatasetNotPreparedError as error:
    raise reader.DatasetNotPreparedError(
        f"{error}\nOr try the method without downloads: python -m ripu_jax.main "
        "--config configs/demo.py --workdir /tmp/ripu_demo") from None
  return Splits(source, target_train, target_val)


def build_model(config: ml_collections.ConfigDict) -> nnx.Module:
  pretrained = config.model.pretrained or None
  if pretrained and not os.path.exists(os.path.expanduser(pretrained)):
    raise FileNotFoundError(
        f"model.pretrained={pretrained!r} does not exist. Convert torchvision's ImageNet "
        "ResNet-101 with scripts/convert_torchvision_resnet.py (see the README), or pass "
        "--config.model.pretrained='' to start from random weights")
  return models.build_model(
      config.model.name, config.model.num_classes, rngs=nnx.Rngs(config.seed),
      pretrained=os.path.expanduser(pretrained) if pretrained else None,
      dtype=config.model.dtype, **config.model.kwargs.to_dict())


def _check_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
  for field in ("train.batch_size", "active.batch_size", "eval.batch_size"):
    group, name = field.split(".")
    value = config[group][name]
    if value % num_devices:
      raise ValueError(f"{field}={value} is not divisible by the {num_devices} devices; set it "
                       f"to a multiple of {num_devices} (e.g. --config.{field}={num_devices})")


def _label_shapes(split) -> np.ndarray:
  return np.array([split.label_shape(i) for i in range(len(split))], np.int64)


def _plan(config: ml_collections.ConfigDict, label_size) -> acquisition.RoundPlan:
  active = config.active
  rounds = len(active.round_steps)
  if active.kind == "ra":
    return acquisition.plan_round("ra", *label_size, radius=active.radius, rounds=rounds,
                                  ratio=active.ratio)
  return acquisition.plan_round("pa", *label_size, radius=active.radius, rounds=rounds,
                                pixels=active.pixels)


def _new_ledger(config: ml_collections.ConfigDict, shapes: np.ndarray) -> LabelLedger:
  if config.active.kind in ("ra", "pa"):
    plan = _plan(config, tuple(shapes[0]))
    return LabelLedger(shapes, label_radius=plan.label_radius,
                       suppress_radius=plan.suppress_radius)
  return LabelLedger(shapes, label_radius=0, suppress_radius=0)


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  text = config.to_json_best_effort(indent=1, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() != text:
        logging.warning("%s differs from the config of this run; the checkpoint's run started "
                        "with the saved one", path)
    return
  with open(path, "w") as f:
    f.write(text)


class Trainer:
  """State and pieces of one run; `run()` trains to `config.num_steps`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_lib.validate(config)
    self.config = config
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(self.workdir, exist_ok=True)
    self.mesh = acquisition.default_mesh()
    _check_devices(config, self.mesh.size)
    self.batch_sharding = NamedSharding(self.mesh, P(acquisition.selection_round.DATA_AXIS))
    self.replicated = NamedSharding(self.mesh, P())
    self.splits = build_splits(config)
    self.class_sets = config_lib.class_sets(config)
    self.label_lookup = config_lib.label_lookup(config)
    shapes = _label_shapes(self.splits.target_train)

    self.model = build_model(config)
    self.optimizer = optim.create_optimizer(
        self.model, base_lr=config.optim.base_lr, max_iter=config.optim.max_iter,
        head_lr_multiplier=config.optim.head_lr_multiplier, momentum=config.optim.momentum,
        weight_decay=config.optim.weight_decay, power=config.optim.power)
    self.checkpoints = Checkpoints(os.path.join(self.workdir, "checkpoints"),
                                   keep=config.keep_checkpoints)
    restored = self.checkpoints.restore(model=self.model, optimizer=self.optimizer)
    self.step = 0
    iterator_states = {}
    if restored is not None:
      self.ledger, progress = restored
      self.ledger.check_matches(shapes)
      self.step = int(progress["step"])
      iterator_states = progress.get("iterators", {})
      tqdm.write(f"resuming from {self.checkpoints.directory} at step {self.step}")
    else:
      self.ledger = _new_ledger(config, shapes)
      if config.train.objective == "source_free" and not config.model.init_from:
        logging.warning("source-free training without model.init_from starts from ImageNet "
                        "(or random) weights; the method starts from a source-only run: "
                        "--config.model.init_from=WORKDIR_OF_A_SOURCE_ONLY_RUN")
      if config.model.init_from:
        init_dir = os.path.join(os.path.expanduser(config.model.init_from), "checkpoints")
        init_step = Checkpoints(init_dir).restore_model(self.model)
        logging.info("model initialised from %s (step %d)", init_dir, init_step)
    _write_config(config, self.workdir)
    state = jax.device_put(nnx.state((self.model, self.optimizer)), self.replicated)
    nnx.update((self.model, self.optimizer), state)

    self.log = MetricsLog(self.workdir, resume_step=self.step)
    self.evaluated_steps = {r["step"] for r in read_metrics(self.workdir)
                            if r.get("kind") == "eval"}
    self._build_loaders(iterator_states)
    train = config.train
    self.train_step = make_train_step(
        objective=train.objective, consistency_weight=train.consistency_weight,
        negative_weight=train.negative_weight, negative_threshold=train.negative_threshold)
    self.eval_step = evaluation.make_eval_step(config.model.num_classes, flip=config.eval.flip)
    self.forward = nnx.jit(lambda model, images: model(images))

  # ------------------------------------------------------------------ data

  def _build_loaders(self, states: Mapping[str, str]) -> None:
    config, splits = self.config, self.splits
    data = config.data
    workers = data.worker_count
    self.iterators = {}
    self.loaders = {}
    if config.train.objective != "source_free":
      self.loaders["source"] = pipeline.source_train_loader(
          splits.source, batch_size=config.train.batch_size, image_size=tuple(data.source_size),
          sampling=data.sampling, flip=data.flip, seed=config.seed, worker_count=workers)
    if config.train.objective != "source_only":
      masks = (AllLabeled(splits.target_train) if config.active.kind == "full"
               else self.ledger.labeled_masks)
      self.loaders["target"] = pipeline.target_train_loader(
          splits.target_train, masks, batch_size=config.train.batch_size,
          image_size=tuple(data.target_size), flip=data.flip, seed=config.seed + 1,
          worker_count=workers)
    for name, loader in self.loaders.items():
      self.iterators[name] = (pipeline.restore_iterator(loader, states[name].encode())
                              if name in states else iter(loader))

  def _put(self, array: np.ndarray) -> jax.Array:
    return jax.device_put(array, self.batch_sharding)

  def _labels(self, labels: np.ndarray) -> np.ndarray:
    """Classes outside the evaluated set become 255 (ignored), as the release's mapping."""
    return self.label_lookup[labels]

  def _next_batch(self) -> dict[str, jax.Array]:
    batch = {}
    for name, iterator in self.iterators.items():
      examples = next(iterator)
      batch[f"{name}_images"] = self._put(examples["image"])
      batch[f"{name}_labels"] = self._put(self._labels(examples["label"]))
    return batch

  def _progress(self) -> dict:
    return {"iterators": {name: it.get_state().decode() for name, it in self.iterators.items()}}

  def _bar(self, **kwargs):
    return tqdm(disable=not self.config.progress_bars, dynamic_ncols=True, **kwargs)

  # ------------------------------------------------------------------ evaluation

  def evaluate(self) -> dict:
    """mIoU on target val at eval.size, logits upsampled to the full labels."""
    config = self.config
    loader = pipeline.eval_loader(
        self.splits.target_val, batch_size=config.eval.batch_size,
        image_size=tuple(config.eval.size), num_devices=self.mesh.size,
        worker_count=config.data.worker_count)
    total = pipeline.pass_batches(len(self.splits.target_val), config.eval.batch_size,
                                  worker_count=config.data.worker_count)
    confusion = np.zeros((config.model.num_classes,) * 2, np.int64)
    self.model.eval()
    for batch in self._bar(iterable=loader, total=total, desc="eval", leave=False):
      confusion += np.asarray(self.eval_step(
          self.model, self._put(batch["image"]), self._put(self._labels(batch["label"])),
          self._put(batch["valid"])), np.int64)
    summary = evaluation.summarize(confusion, self.class_sets)
    summary["labelled_fraction"] = self._labelled_fraction()
    self.log.write(self.step, "eval", summary)
    self.evaluated_steps.add(self.step)
    extra = "".join(f", {name} {summary[name]:.1f}" for name in self.class_sets if name != "miou")
    tqdm.write(f"step {self.step}: mIoU {summary['miou']:.1f}{extra} on target val; "
               f"labelled {summary['labelled_fraction']:.2%} of target train pixels")
    return summary

  def _labelled_fraction(self) -> float:
    return 1.0 if self.config.active.kind == "full" else self.ledger.labeled_fraction()

  # ------------------------------------------------------------------ selection

  def select(self, round_number: int) -> None:
    """One selection round over the whole target pool; records it in the ledger."""
    config, split = self.config, self.splits.target_train
    active = config.active
    strategy = acquisition.get_strategy(active.strategy)
    out = exports.round_dir(self.workdir, round_number)
    loader = pipeline.selection_loader(
        split, batch_size=active.batch_size, image_size=tuple(config.data.target_size),
        num_devices=self.mesh.size, worker_count=config.data.worker_count)
    total = pipeline.pass_batches(len(split), active.batch_size,
                                  worker_count=config.data.worker_count)
    seed = config.seed * 1_000_003 + round_number
    records, overlays_left = [], active.num_overlays
    self.model.eval()
    for batch in self._bar(iterable=loader, total=total, desc=f"round {round_number}",
                           leave=False):
      sizes = {tuple(int(v) for v in size) for size in batch["label_size"]}
      if len(sizes) != 1:
        raise ValueError(f"target images of one selection batch have different label sizes "
                         f"{sorted(sizes)}; set --config.active.batch_size={self.mesh.size}")
      label_size = sizes.pop()
      plan = _plan(config, label_size)
      indices = [int(i) for i in batch["index"]]
      names = [split.name(i) for i in indices]
      logits = self.forward(self.model, self._put(batch["image"]))
      excluded = np.stack([self.ledger.excluded_mask(i) for i in indices])
      selection = acquisition.select_round(
          logits, plan=plan, strategy=active.strategy, label_size=label_size,
          excluded=excluded, image_ids=np.asarray(indices, np.int32), seed=seed,
          image_names=names, mesh=self.mesh)
      for j in np.flatnonzero(batch["valid"]):
        index, name = indices[j], names[j]
        picks = selection.picks[j][selection.picks[j, :, 0] >= 0]
        self.ledger.record(round_number, index, picks)
        exports.save_mask(os.path.join(out, "masks"), name, selection.labeled[j])
        records.append({"index": index, "name": name, "picks": picks.tolist()})
        if overlays_left > 0:
          overlays_left -= 1
          self._overlay(out, name, batch["image"][j], logits[j], selection.labeled[j],
                        strategy, plan, label_size, seed, index)
    exports.write_picks(out, round_number=round_number, step=self.step,
                        strategy=active.strategy, kind=active.kind,
                        label_radius=self.ledger.label_radius, images=records)
    fraction = self.ledger.labeled_fraction()
    picks = sum(len(r["picks"]) for r in records)
    self.log.write(self.step, "round", {"round": round_number, "picks": picks,
                                        "labelled_fraction": fraction})
    tqdm.write(f"step {self.step}: round {round_number}/{len(active.round_steps)} picked "
               f"{picks} {'regions' if active.kind == 'ra' else 'pixels'} with "
               f"{active.strategy!r}; labelled {fraction:.2%} of target train pixels "
               f"(exported to {out})")

  def _overlay(self, out, name, image, logits, labeled, strategy, plan, label_size, seed,
               index) -> None:
    upsampled = acquisition.upsample_logits(logits[None], label_size)
    key = jax.random.fold_in(jax.random.key(seed), index)[None]
    score = strategy(upsampled, radius=plan.radius, mode=plan.mode, keys=key)[0]
    exports.save_overlay(
        os.path.join(out, "overlays", f"{name}.png"), pipeline.denormalize_image(image),
        np.asarray(jnp.argmax(upsampled[0], -1)), np.asarray(score), labeled,
        score_name=f"{self.config.active.strategy} score")

  # ------------------------------------------------------------------ training

  def _save(self) -> None:
    self.checkpoints.save(self.step, model=self.model, optimizer=self.optimizer,
                          ledger=self.ledger, progress=self._progress())

  def _round_due(self) -> int | None:
    """The round (1-based) to run before the next step, if any and not yet recorded."""
    if self.config.active.kind not in ("ra", "pa"):
      return None
    for number, round_step in enumerate(self.config.active.round_steps, start=1):
      if round_step == self.step and number not in self.ledger.rounds_recorded:
        return number
    return None

  def _learning_rates(self) -> dict[str, float]:
    o = self.config.optim
    return optim.learning_rates(self.step, o.base_lr, o.max_iter,
                                head_lr_multiplier=o.head_lr_multiplier, power=o.power)

  def run(self) -> dict | None:
    """Trains to num_steps with the configured rounds, evals and checkpoints."""
    config = self.config
    summary = None
    bar = self._bar(total=config.num_steps, initial=self.step, desc="train")
    try:
      while True:
        round_number = self._round_due()
        if round_number is not None:
          if self.step not in self.evaluated_steps:
            summary = self.evaluate()
          self.select(round_number)
          if "target" in self.loaders:  # worker processes pick up the new labels
            self.iterators["target"] = pipeline.restore_iterator(
                self.loaders["target"], self.iterators["target"].get_state())
          self._save()
          continue
        if self.step >= config.num_steps:
          break
        self.model.train()
        metrics = jax.device_get(self.train_step(self.model, self.optimizer,
                                                 self._next_batch()))
        self.step += 1
        bar.update(1)
        bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
        if bad:
          raise FloatingPointError(
              f"step {self.step}: non-finite training metrics {bad}. The run stopped without "
              f"saving; the last good checkpoint (step {self.checkpoints.latest_step()}) is "
              f"in {self.checkpoints.directory}. Lower optim.base_lr or check the inputs.")
        if self.step % config.log_every == 0 or self.step == config.num_steps:
          record = {k: float(v) for k, v in metrics.items()}
          record["learning_rate"] = self._learning_rates()
          self.log.write(self.step, "train", record)
          bar.set_postfix(loss=f"{record['total']:.3f}")
        if self.step % config.eval.every == 0 or self.step == config.num_steps:
          summary = self.evaluate()
        if ((self.step % config.checkpoint_every == 0 or self.step == config.num_steps)
            and self._round_due() is None):
          self._save()
      if self.step not in self.evaluated_steps:
        summary = self.evaluate()
      elif summary is None:  # resumed a finished run: report its last evaluation
        summary = [r for r in read_metrics(self.workdir) if r.get("kind") == "eval"][-1]
    finally:
      bar.close()
    return summary

  def close(self) -> None:
    self.checkpoints.close()
    self.log.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Runs (or resumes) the configured training in `workdir`; returns the last eval summary."""
  trainer = Trainer(config, workdir)
  try:
    summary = trainer.run()
  finally:
    trainer.close()
  with open(os.path.join(trainer.workdir, "final.json"), "w") as f:
    json.dump({"step": trainer.step, **(summary or {})}, f, indent=1)
  return summary
