"""The trainer: one loop for every method, its pieces chosen by name from the config.

`train_and_evaluate(config, workdir)` runs a config from `configs/` to the end, resuming
from `workdir` if it holds a checkpoint. The config names an objective (`train.objective`:
the train state and the step), an acquirer (`active.kind`: when and how target labels are
bought) and hooks (`hooks`); modules in `plugins` are imported first, so a method defined
outside the package is chosen like a built-in one. Everything that defines the budget lives
in the label ledger (`ripu_jax.ledger`), which is checkpointed right after every selection
round; a rerun after a crash redoes at most the work since the last checkpoint, and redoes
it identically (seeded data order, restored iterators, deterministic selection, training
metrics summed since the last log step).

workdir layout: checkpoints/, metrics.jsonl, tensorboard/, rounds/<r>/ (see
`ripu_jax.exports`), config.json, progress.png (`ripu_jax.report`).

With `active.oracle = "annotators"` the labels of a round come from people: the run saves,
writes the round's labelling tasks and stops (`LabelsNeeded`, reported, not raised, by
`train_and_evaluate`); a rerun takes the imported answers into the ledger and trains on from
the checkpoint taken at the round (`ripu_jax.annotations`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Mapping

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from ripu_jax import annotations
from ripu_jax import config_lib
from ripu_jax import distributed
from ripu_jax import evaluation
from ripu_jax import exports
from ripu_jax import hooks as hooks_lib
from ripu_jax import methods  # noqa: F401  (registers the built-in methods)
from ripu_jax import models
from ripu_jax import objectives
from ripu_jax import optim
from ripu_jax import registry
from ripu_jax import report
from ripu_jax import sharding
from ripu_jax import workdir as workdir_lib
from ripu_jax.acquisition.acquirers import ACQUIRERS, RoundPool, RoundResult
from ripu_jax.checkpoints import Checkpoints
from ripu_jax.errors import ConfigError, MissingFileError, MissingWeightsError, NonFiniteError
from ripu_jax.image_ops import upsample_to_labels
from ripu_jax.data import catalog
from ripu_jax.data import pipeline
from ripu_jax.ledger import LabelLedger
from ripu_jax.metrics_log import MetricsLog, read_metrics

CONFIG_FILE = workdir_lib.CONFIG_FILE


def build_splits(config: ml_collections.ConfigDict) -> catalog.RunSplits:
  """Opens the configured datasets; a missing one raises with how to prepare it."""
  data = config.data
  reads_source = "source" in objectives.OBJECTIVES.get(config.train.objective).domains
  return catalog.open_run_splits(
      data.source if reads_source else None, data.target, data_dir=data.data_dir,
      options={name: data[name] for name in (data.source, data.target) if name in data})


def build_model(config: ml_collections.ConfigDict) -> nnx.Module:
  pretrained = config.model.pretrained or None
  try:
    return models.build_model(
        config.model.name, config_lib.num_classes(config), rngs=nnx.Rngs(config.seed),
        pretrained=os.path.expanduser(pretrained) if pretrained else None,
        dtype=config.model.dtype, **objectives.model_kwargs(config))
  except MissingWeightsError as error:  # the model's backbone names its converter
    raise MissingWeightsError(f"model.pretrained: {error} (see the README), or pass "
                              "--config.model.pretrained='' to start from random weights"
                              ) from None


def _has_steps(directory: str) -> bool:
  """Whether a checkpoints/ folder holds at least one step folder."""
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _label_shapes(split) -> np.ndarray:
  return np.array([split.label_shape(i) for i in range(len(split))], np.int64)


class Trainer:
  """State and pieces of one run; `run()` trains to `config.num_steps`.

  Hooks read `config`, `workdir`, `step`, `state` (the `TrainState`), `ledger` and `log`.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               allow_config_change: tuple[str, ...] = ()):
    """Checks everything that can be checked before the workdir is touched, then locks it.

    allow_config_change: config fields that may differ from the config recorded in a
      workdir that already holds checkpoints (see `ripu_jax.workdir`).
    """
    registry.import_plugins(tuple(config.plugins))
    config_lib.validate(config)
    distributed.check_same_config(config.to_json_best_effort(sort_keys=True),
                                  workdir_lib.flatten)
    self.config = config
    self.workdir = workdir_lib.check_path(workdir)
    self.mesh = sharding.default_mesh()
    self.primary = distributed.is_primary()  # writes the run's files; every process computes
    for field in ("train.batch_size", "active.batch_size", "eval.batch_size"):
      group, name = field.split(".")
      distributed.check_batch(field, config[group][name])
      sharding.check_divisible(field, config[group][name], self.mesh)
    # Each process reads its share of every training and evaluation batch.
    self._shard = (grain.sharding.ShardOptions(shard_index=jax.process_index(),
                                               shard_count=jax.process_count())
                   if jax.process_count() > 1 else None)
    self.objective = objectives.OBJECTIVES.get(config.train.objective)(config)
    self.acquirer = ACQUIRERS.get(config.active.kind)(config)
    self.hooks = list(self.objective.hooks()) + [
        hooks_lib.HOOKS.get(name)(config) for name in config.hooks]
    self.splits = build_splits(config)
    self.label_space = config_lib.label_space(config)
    self.label_maps = {domain: catalog.label_map(config.data[domain], self.label_space)
                       for domain in ("source", "target") if config.data[domain]}
    shapes = _label_shapes(self.splits.target_train)
    model = build_model(config)
    self._init_dir = (os.path.join(os.path.expanduser(config.model.init_from), "checkpoints")
                      if config.model.init_from else None)
    if (self._init_dir and not _has_steps(os.path.join(self.workdir, "checkpoints"))
        and not _has_steps(self._init_dir)):
      raise MissingFileError(
          f"model.init_from={config.model.init_from!r} holds no checkpoint ({self._init_dir}); "
          "give the workdir of a finished run (e.g. a source-only run)")

    created = not os.path.isdir(self.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    # Process 0 holds the lock for the run (the workdir is shared by every process).
    self._lock = workdir_lib.WorkdirLock(self.workdir) if self.primary else None
    try:
      self._open_run(model, shapes, tuple(allow_config_change))
    except BaseException:
      self._release_lock()
      if created and self.primary:  # nothing was computed: leave no workdir behind
        shutil.rmtree(self.workdir, ignore_errors=True)
      raise

  def _open_run(self, model: nnx.Module, shapes: np.ndarray,
                allow_config_change: tuple[str, ...]) -> None:
    """Restores the run (or starts it), after checking the config against the workdir's."""
    config = self.config
    self.did_work = False
    self.state = self.objective.build_state(model)
    self._replicate_state()  # restores then land on the mesh (across processes too)
    self.checkpoints = Checkpoints(os.path.join(self.workdir, "checkpoints"),
                                   keep=config.keep_checkpoints)
    if self.primary:
      workdir_lib.record_config(
          self.workdir, config.to_json_best_effort(indent=1, sort_keys=True),
          checkpoint_step=self.checkpoints.latest_step(), allow_changes=allow_config_change,
          defaults=config_lib.field_defaults())
      self.checkpoints.settle()  # damaged checkpoints moved aside before anyone restores
    distributed.barrier("checkpoints settled")
    if not self.primary:
      self.checkpoints.reload()
    restored = self.checkpoints.restore(state=self.state)
    self.step = 0
    progress = {}
    start_result = None
    if restored is not None:
      self.ledger, progress = restored
      self.ledger.check_matches(shapes)
      self.step = int(progress["step"])
      tqdm.write(f"resuming from {self.checkpoints.directory} at step {self.step}")
    elif config.train.get("continue_from"):
      self.ledger, progress = self._continue_run(shapes)
      self.step = int(progress["step"])
      self.objective.initialize(self.state)
    else:
      label_radius, suppress_radius = self.acquirer.ledger_radii(tuple(shapes[0]))
      self.ledger = LabelLedger(shapes, label_radius=label_radius,
                                suppress_radius=suppress_radius)
      start_result = self.acquirer.start(self.ledger, self.splits.target_train.name)
      if self._init_dir:
        source_run = Checkpoints(self._init_dir, read_only=True)
        try:
          init_step = source_run.restore_model(
              self.state.model, may_lack=self.objective.init_from_may_lack())
        finally:
          source_run.close()
        logging.info("model initialised from %s (step %d)", self._init_dir, init_step)
      self.objective.initialize(self.state)
    self._replicate_state()

    self.log = (MetricsLog(self.workdir, resume_step=self.step) if self.primary
                else _SilentLog())
    if start_result is not None:
      self._export_round(0, start_result)
    self._take_answers()
    evaluated = sorted({r["step"] for r in read_metrics(self.workdir)
                        if r.get("kind") == "eval"}) if self.primary else None
    self.evaluated_steps = set(json.loads(distributed.broadcast(
        "evaluated steps", json.dumps(evaluated))))
    self._build_loaders(_process_iterators(progress))
    sums = progress.get("metric_sums")
    self._metric_sums = ({k: np.float32(v) for k, v in sums.items()} if sums else None)
    self._metric_count = int(progress.get("metric_count", 0))
    self.train_step = self.objective.make_step()
    self.eval_step = evaluation.make_eval_step(self.label_space.num_classes,
                                               flip=config.eval.flip)
    self._forward = nnx.jit(lambda model, images: model(images))
    self._forward_named = nnx.jit(lambda model, images, names: model(images, outputs=names),
                                  static_argnames="names")
    self._accumulate = jax.jit(lambda sums, metrics: jax.tree.map(jnp.add, sums, metrics))
    self._mc_probs = nnx.jit(_mc_probs, static_argnames=("passes", "label_size"))

  def reinitialize(self) -> None:
    """The train state as a new run starts it: the model from its initial weights (the
    config's seed and `model.pretrained`), new optimizers, fresh extras. For methods that
    train again from scratch every round; the ledger and the step stay."""
    if self._init_dir:
      raise ConfigError("restarting training is not supported with model.init_from; start "
                        "from model.pretrained weights instead")
    fresh = self.objective.build_state(build_model(self.config))
    self.objective.initialize(fresh)
    nnx.update(self.state, nnx.state(fresh))
    self._replicate_state()

  def _replicate_state(self) -> None:
    nnx.update(self.state, sharding.replicate(nnx.state(self.state), self.mesh))

  def _continue_run(self, shapes: np.ndarray) -> tuple[LabelLedger, dict]:
    """Takes a finished run's state (model, optimizer, ledger, step, data position) to go
    on from its last step; the objective's networks it lacks start fresh."""
    config = self.config
    directory = os.path.expanduser(config.train.continue_from)
    checkpoints = os.path.join(directory, "checkpoints")
    if not _has_steps(checkpoints):
      raise MissingFileError(
          f"train.continue_from={config.train.continue_from!r} holds no checkpoint "
          f"({checkpoints}); give the workdir of a finished run")
    source = Checkpoints(checkpoints, read_only=True)
    try:
      if not os.path.exists(os.path.join(directory, "final.json")):
        ledger = source.restore_ledger()
        raise MissingFileError(
            f"train.continue_from={config.train.continue_from!r} is not a finished run: it "
            f"stopped at step {source.latest_step()} with rounds {list(ledger.rounds_recorded)} "
            f"recorded. Finish it first (rerun its command with --workdir={directory}), "
            "then continue it")
      ledger, progress, fresh = source.restore_continued(self.state)
    finally:
      source.close()
    ledger.check_matches(shapes)
    step = int(progress["step"])
    if step >= config.num_steps:
      raise ConfigError(f"invalid config: train.continue_from ends at step {step}, not before "
                        f"num_steps={config.num_steps}; nothing is left to train")
    self.objective.check_start(step)
    tqdm.write(f"continuing {directory} from step {step}"
               + (f"; new: {', '.join(fresh)}" if fresh else ""))
    return ledger, {"step": step, "iterators": progress.get("iterators", {})}

  # ------------------------------------------------------------------ data

  def _build_loaders(self, states: Mapping[str, str]) -> None:
    """One endless loader per domain the objective reads (`objectives.DOMAINS`)."""
    config, splits = self.config, self.splits
    data = config.data
    crop = tuple(data.crop_size) if data.get("crop_size") is not None else None
    common = dict(batch_size=distributed.local_rows(config.train.batch_size), flip=data.flip,
                  crop_size=crop, worker_count=data.worker_count, shard_options=self._shard)
    self.iterators = {}
    self.loaders = {}
    for domain in self.objective.domains:
      options = {**common, **self.objective.loader_options(domain)}
      if domain == "source":
        self.loaders[domain] = pipeline.source_train_loader(
            splits.source, image_size=tuple(data.source_size), sampling=data.sampling,
            seed=config.seed, label_map=self.label_maps["source"], **options)
        continue
      seed, indices = config.seed + 1, None
      if domain != "target":  # "labelled" / "unlabelled": images with / without labels
        labelled = np.array([bool(self.ledger.rounds_of(i))
                             for i in range(self.ledger.num_images)])
        indices = np.flatnonzero(labelled if domain == "labelled" else ~labelled)
        seed = config.seed + (2 if domain == "labelled" else 3)
        if not len(indices):
          raise ValueError(
              f"train.objective {config.train.objective!r} reads {domain} target images, "
              "but the label ledger leaves none; check active.labelled_fraction / "
              "active.labelled_list")
      bought = self.ledger.bought_labels if self._annotated else None
      self.loaders[domain] = pipeline.target_train_loader(
          splits.target_train, self.ledger.labeled_masks, image_size=tuple(data.target_size),
          seed=seed, label_map=self.label_maps["target"], indices=indices,
          bought_labels=bought, **options)
    for name, loader in self.loaders.items():
      self.iterators[name] = (pipeline.restore_iterator(loader, states[name].encode())
                              if name in states else iter(loader))

  def _put(self, array: np.ndarray) -> jax.Array:
    return sharding.put_batch(array, self.mesh)

  def _next_batch(self) -> dict[str, jax.Array]:
    """{"<domain>_images", "<domain>_labels", "<domain>_<feature>" (depth, pose, ...)}."""
    batch = {}
    for name, iterator in self.iterators.items():
      examples = next(iterator)
      batch[f"{name}_images"] = self._put(examples["image"])
      batch[f"{name}_labels"] = self._put(examples["label"])
      for key in examples.keys() - {"image", "label", "index"}:
        batch[f"{name}_{key}"] = self._put(examples[key])
    return batch

  def _progress(self) -> dict:
    states = {name: it.get_state().decode() for name, it in self.iterators.items()}
    extra = {}
    if jax.process_count() > 1:  # every process's position, written once by process 0
      extra["process_iterators"] = [json.loads(text) for text in distributed.exchange(
          "iterator states", json.dumps(states))]
    return {"iterators": states, **extra,
            "metric_sums": ({k: float(v) for k, v in self._metric_sums.items()}
                            if self._metric_sums is not None else None),
            "metric_count": self._metric_count}

  def _bar(self, **kwargs):
    return tqdm(disable=not (self.config.progress_bars and self.primary), dynamic_ncols=True,
                **kwargs)

  # ------------------------------------------------------------------ evaluation

  def val_batches(self, desc: str = "eval"):
    """One pass over target val at eval.size on device: {"image", "label" (full size),
    "valid" (False on padding rows)}, with a progress bar."""
    config = self.config
    batch_size = distributed.local_rows(config.eval.batch_size)
    loader = pipeline.eval_loader(
        self.splits.target_val, batch_size=batch_size, image_size=tuple(config.eval.size),
        num_devices=jax.local_device_count(), worker_count=config.data.worker_count,
        shard_options=self._shard, label_map=self.label_maps["target"])
    total = pipeline.pass_batches(len(self.splits.target_val), batch_size, self._shard,
                                  worker_count=config.data.worker_count)
    for batch in self._bar(iterable=loader, total=total, desc=desc, leave=False):
      yield {key: self._put(batch[key]) for key in ("image", "label", "valid")}

  def evaluate(self) -> dict:
    """mIoU on target val at eval.size, logits upsampled to the full labels."""
    num_classes = self.label_space.num_classes
    confusion = np.zeros((num_classes, num_classes), np.int64)
    model = self.state.model
    model.eval()
    for batch in self.val_batches():
      confusion += sharding.to_host(self.eval_step(
          model, batch["image"], batch["label"], batch["valid"])).astype(np.int64)
    class_sets = self.label_space.eval_sets
    summary = evaluation.summarize(confusion, class_sets, self.label_space.class_names)
    summary["labelled_fraction"] = self.ledger.labeled_fraction()
    self.log.write(self.step, "eval", summary)
    self._draw_progress()
    self.evaluated_steps.add(self.step)
    self.did_work = True
    extra = "".join(f", {name} {summary[name]:.1f}" for name in class_sets if name != "miou")
    tqdm.write(f"step {self.step}: mIoU {summary['miou']:.1f}{extra} on target val; "
               f"labelled {summary['labelled_fraction']:.2%} of target train pixels")
    hooks_lib.call(self.hooks, "after_eval", self, summary)
    return summary

  def _draw_progress(self) -> None:
    """Redraws workdir/progress.png (once, on process 0); a failed picture is only logged."""
    if jax.process_index() == 0:
      report.update_progress_plot(self.workdir)

  # ------------------------------------------------------------------ selection

  def predict(self, images: np.ndarray, outputs=("logits",),
              network: str = "model") -> dict[str, jax.Array]:
    """Named outputs of a network of the train state for a batch of images, in eval mode."""
    if network != "model" and network not in self.state.extra_names:
      raise ValueError(f"the train state has no network {network!r}; it holds 'model' and "
                       f"{list(self.state.extra_names)}")
    model = getattr(self.state, network)
    model.eval()
    images = sharding.put_global_batch(images, self.mesh)  # a selection batch, whole here
    if tuple(outputs) == ("logits",):
      return {"logits": self._forward(model, images)}
    return self._forward_named(model, images, tuple(outputs))

  def predict_mc(self, images: np.ndarray, key: jax.Array, passes: int,
                 label_size: tuple[int, int], network: str = "model") -> jax.Array:
    """Mean softmax at `label_size` of `passes` Monte-Carlo dropout passes of a network of
    the train state (eval mode, its channel dropout on), on device."""
    if network != "model" and network not in self.state.extra_names:
      raise ValueError(f"the train state has no network {network!r}; it holds 'model' and "
                       f"{list(self.state.extra_names)}")
    model = getattr(self.state, network)
    model.eval()
    images = sharding.put_global_batch(images, self.mesh)
    return self._mc_probs(model, images, key, passes=int(passes),
                          label_size=tuple(int(v) for v in label_size))

  def select(self, round_number: int) -> RoundResult:
    """One selection round over the whole target pool; records it in the ledger."""
    config, split = self.config, self.splits.target_train
    active = config.active
    workers = config.data.worker_count
    pool = RoundPool(
        round_number=round_number, seed=config.seed * 1_000_003 + round_number,
        batches=lambda with_labels=False: pipeline.selection_loader(
            split, batch_size=active.batch_size, image_size=tuple(config.data.target_size),
            num_devices=self.mesh.size, worker_count=workers,
            label_map=self.label_maps["target"], with_labels=with_labels),
        num_batches=pipeline.pass_batches(len(split), active.batch_size, worker_count=workers),
        name=split.name, predict=self.predict, mesh=self.mesh,
        num_overlays=active.num_overlays,
        progress=lambda iterable, **kwargs: self._bar(iterable=iterable, leave=False, **kwargs),
        predict_mc=self.predict_mc, groups=getattr(split, "scene_ids", None),
        coverage=getattr(split, "scene_coverage", None))
    result = self.acquirer.run_round(pool, self.ledger)
    self._export_round(round_number, result)
    return result

  def _export_round(self, round_number: int, result: RoundResult) -> None:
    if not self.primary:
      return
    out = exports.round_dir(self.workdir, round_number)
    active = self.config.active
    records = []
    for image in result.images:
      exports.save_mask(os.path.join(out, "masks"), image.name, image.labeled)
      record = {"index": image.index, "name": image.name}
      if image.picks is not None:
        record["picks"] = np.asarray(image.picks).tolist()
      records.append(record)
    for overlay in result.overlays:
      exports.save_overlay(
          os.path.join(out, "overlays", f"{exports.safe_name(overlay.name)}.png"),
          pipeline.denormalize_image(overlay.image), overlay.prediction, overlay.score,
          overlay.labeled, score_name=f"{result.strategy} score",
          colorize=self.label_space.colorize)
    exports.write_picks(out, round_number=round_number, step=self.step,
                        strategy=result.strategy, kind=active.kind,
                        label_radius=result.label_radius, images=records)
    if self._annotated:  # the masks above are the queries; importing checks them on the ledger
      split = self.splits.target_train
      queries = [annotations.Query(image.index, image.name, image.labeled)
                 for image in result.images]
      annotations.export_tasks(out, round_number, queries, lambda i: split[i]["image"],
                               self.label_space, _rerun_command(self.workdir))
    fraction = self.ledger.labeled_fraction()
    self.log.write(self.step, "round", {"round": round_number, "picks": result.count,
                                        "labelled_fraction": fraction})
    self._draw_progress()
    how = f" with {result.strategy!r}" if result.strategy else ""
    if round_number == 0:
      tqdm.write(f"labelled {result.count} {result.unit} before training; labelled "
                 f"{fraction:.2%} of target train pixels (exported to {out})")
      return
    tqdm.write(f"step {self.step}: round {round_number}/{len(self.acquirer.round_steps)} picked "
               f"{result.count} {result.unit}{how}; labelled {fraction:.2%} of target train "
               f"pixels (exported to {out})")

  # ------------------------------------------------------------------ annotators

  @property
  def _annotated(self) -> bool:
    return self.config.active.oracle == "annotators"

  def _take_answers(self) -> None:
    """Records the imported answers of every round that waits for them (importing
    rounds/<r>/labels/ first if the annotators left their PNGs there)."""
    if not self._annotated:
      return
    for round_number, images in self.ledger.pending().items():
      answers = annotations.load_answers(self.workdir, round_number)
      folder = os.path.join(exports.round_dir(self.workdir, round_number),
                            annotations.LABELS_DIR)
      if answers is None and os.path.isdir(folder) and os.listdir(folder):
        answers, report = annotations.read_answers(self.workdir, round_number, folder)
        if self.primary:
          annotations.write_answers(self.workdir, round_number, answers)
        tqdm.write(annotations.describe(report, round_number))
      if answers is None:
        continue
      try:
        for index in images:
          if index not in answers:
            raise ValueError(f"it has no labels for image {index}")
          self.ledger.record_answers(round_number, index, *answers[index])
      except ValueError as error:
        raise annotations.AnnotationError(
            f"the imported labels of round {round_number} do not fit the run's query: "
            f"{error}. Import the round again from its label files") from None
      tqdm.write(f"took the annotators' labels of round {round_number} ({len(images)} images)")

  def _await_labels(self) -> None:
    """Stops the run (after a checkpoint) while a recorded round has no answers."""
    if not self._annotated:
      return
    pending = self.ledger.pending()
    if not pending:
      return
    if self.checkpoints.latest_step() != self.step:
      self._save()
    lines = ["waiting for labels from annotators; the run stopped after saving step "
             f"{self.step}."]
    for round_number in pending:
      readme = os.path.join(exports.round_dir(self.workdir, round_number),
                            annotations.TASKS_DIR, "README.txt")
      with open(readme) as f:
        lines.append(f.read().rstrip())
    raise annotations.LabelsNeeded("\n".join(lines))

  # ------------------------------------------------------------------ training

  def _check_finite(self) -> dict[str, float] | None:
    """Training metrics averaged since the last log step; raises if any is not finite."""
    if self._metric_sums is None:
      return None
    sums = jax.tree.map(sharding.to_host, self._metric_sums)
    means = {k: float(v) / self._metric_count for k, v in sums.items()}
    bad = {k: v for k, v in means.items() if not np.isfinite(v)}
    if bad:
      first = self.step - self._metric_count + 1
      latest = self.checkpoints.latest_step()
      resume = (f"the last good checkpoint (step {latest}) is in {self.checkpoints.directory}"
                if latest is not None else
                "no checkpoint has been written yet, so a rerun starts from step 0")
      raise NonFiniteError(
          f"step {self.step}: non-finite training metrics {bad} (averaged over steps "
          f"{first}-{self.step}). The run stopped without saving; {resume}. Lower "
          "optim.base_lr or check the inputs.")
    return means

  def _save(self) -> None:
    self._check_finite()
    self.checkpoints.save(self.step, state=self.state, ledger=self.ledger,
                          progress=self._progress())

  def _round_due(self) -> int | None:
    """The round (1-based) to run before the next step, if any and not yet recorded."""
    for number, round_step in enumerate(self.acquirer.round_steps, start=1):
      if round_step == self.step and number not in self.ledger.rounds_recorded:
        return number
    return None

  def _learning_rates(self) -> dict[str, float]:
    return optim.learning_rates_from_config(self.step, self.config.optim)

  def _log_train(self, bar) -> None:
    record = self._check_finite()
    self._metric_sums, self._metric_count = None, 0
    record["learning_rate"] = self._learning_rates()
    self.log.write(self.step, "train", record)
    bar.set_postfix(loss=f"{record['total']:.3f}")

  def run(self) -> dict | None:
    """Trains to num_steps with the configured rounds, evals and checkpoints."""
    config = self.config
    summary = None
    bar = self._bar(total=config.num_steps, initial=self.step, desc="train")
    try:
      while True:
        self._await_labels()
        round_number = self._round_due()
        if round_number is not None:
          if self.step not in self.evaluated_steps:
            summary = self.evaluate()
          result = self.select(round_number)
          hooks_lib.call(self.hooks, "after_round", self, result)
          if "target" in self.loaders:  # worker processes pick up the new labels
            self.iterators["target"] = pipeline.restore_iterator(
                self.loaders["target"], self.iterators["target"].get_state())
          self._save()
          continue
        if self.step >= config.num_steps:
          break
        self.state.train()
        metrics = self.train_step(self.state, self._next_batch())
        self._metric_sums = (metrics if self._metric_sums is None
                             else self._accumulate(self._metric_sums, metrics))
        self._metric_count += 1
        self.step += 1
        self.did_work = True
        bar.update(1)
        hooks_lib.call(self.hooks, "after_step", self, metrics)
        if self.step % config.log_every == 0 or self.step == config.num_steps:
          self._log_train(bar)
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
    try:
      self.checkpoints.close()
      self.log.close()
    finally:
      self._release_lock()

  def release(self) -> None:
    """Leaves the workdir without waiting on pending saves (after an interrupt)."""
    try:
      self.log.close()
    finally:
      self._release_lock()

  def _release_lock(self) -> None:
    if self._lock is not None:
      self._lock.release()


def _mc_probs(model: nnx.Module, images: jax.Array, key: jax.Array, *, passes: int,
              label_size: tuple[int, int]) -> jax.Array:
  """Mean of `passes` Monte-Carlo dropout softmax maps at `label_size`, one pass per step of
  a scan (the memory of one pass)."""
  def probs(pass_key):
    logits = models.mc_logits(model, images, pass_key)
    return jax.nn.softmax(upsample_to_labels(logits, label_size), axis=-1)

  keys = jax.random.split(key, passes)
  total, _ = jax.lax.scan(lambda total, k: (total + probs(k), None), probs(keys[0]), keys[1:])
  return total / passes


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: tuple[str, ...] = ()) -> dict | None:
  """Runs (or resumes) the configured training in `workdir`; returns the last eval summary.

  final.json holds the last evaluation; a rerun of a finished run leaves it as it was.
  """
  trainer = Trainer(config, workdir, allow_config_change=allow_config_change)
  try:
    summary = trainer.run()
  except annotations.LabelsNeeded as waiting:
    trainer.close()
    distributed.finish()
    print(waiting, flush=True)
    return None
  except KeyboardInterrupt:
    # Interrupted, maybe inside a save: waiting on the checkpoint manager could block for
    # good. The last committed checkpoint is intact; a rerun resumes from it.
    trainer.release()
    raise
  except BaseException:
    trainer.close()
    raise
  trainer.close()
  distributed.finish()
  path = os.path.join(trainer.workdir, "final.json")
  if trainer.primary and (trainer.did_work or not os.path.exists(path)):
    exports.write_json(path, {"step": trainer.step, **(summary or {})}, indent=1)
  if trainer.primary and not trainer.did_work and summary:
    print(f"{trainer.workdir} holds a finished run: step {trainer.step}, mIoU "
          f"{summary['miou']:.1f} on target val (final.json); give another --workdir to train "
          "again", flush=True)
  return summary


def _rerun_command(workdir: str) -> str:
  """The command line that continues this run (this process's own, when run from main)."""
  if sys.argv and sys.argv[0].endswith(os.path.join("ripu_jax", "main.py")):
    return "python -m ripu_jax.main " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  return f"the training command again, with the workdir {workdir}"


class _SilentLog:
  """The metrics log of processes other than 0: process 0 writes the run's one copy."""

  def write(self, *args, **kwargs) -> None:
    del args, kwargs

  def close(self) -> None:
    pass


def _process_iterators(progress: Mapping) -> dict:
  """This process's data-iterator states from a checkpoint's progress."""
  count, index = jax.process_count(), jax.process_index()
  per_process = progress.get("process_iterators")
  saved = len(per_process) if per_process else 1
  if progress.get("iterators") and saved != count:
    raise ConfigError(
        f"the checkpoint was written by a run of {saved} process(es); this one has {count}. "
        f"Resume it with {saved} process(es) (each reads its own share of the data), or start "
        "a fresh workdir")
  return per_process[index] if per_process else progress.get("iterators", {})
