"""What a user needs to trust ELN's pseudo labels, measured at every evaluation.

After the trainer's evaluation of the student, `ElnReport` runs over target val once more:
the pseudo-label network (the EMA teacher once self-training has started, the student
before) predicts, the ELN judges each pixel, and the ground truth (for reporting only)
says how good the kept pixels' labels are. Logged as a record of kind "eln":

  teacher_miou       the pseudo-label network's mIoU (and its other class sets)
  kept_fraction      share of valid val pixels the ELN keeps (sigmoid > eln.keep_threshold)
  kept_accuracy      pixel accuracy of the pseudo labels on kept pixels
  all_accuracy       ... on all valid pixels: the ELN helps when kept > all

Everything is at the label's full size: logits go network -> input -> label size like the
evaluation, the ELN's logit is upsampled to the label size. Reported from stage 2 on (the
ELN is untrained before).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from ripu_jax import evaluation
from ripu_jax import sharding
from ripu_jax.hooks import Hook
from ripu_jax.image_ops import upsample_logits, upsample_to_labels

KIND = "eln"


@nnx.jit(static_argnames=("num_classes",))
def _report_batch(predictor, network, images, labels, valid, threshold, num_classes):
  """(confusion [C, C], [valid, correct, kept, kept and correct] pixel counts) of a batch."""
  logits = predictor(images)
  size = labels.shape[1:3]
  prediction = jnp.argmax(upsample_to_labels(logits, size, images.shape[1:3]), axis=-1)
  keep_logit = upsample_logits(network(images, logits)[..., None], size)[..., 0]
  keep = jax.nn.sigmoid(keep_logit) > threshold
  counted = valid[:, None, None] & (labels >= 0) & (labels < num_classes)
  correct = counted & (prediction == labels)
  kept = counted & keep
  counts = jnp.stack([jnp.sum(x, dtype=jnp.int32)
                      for x in (counted, correct, kept, kept & correct)])
  confusion = evaluation.confusion_matrix(labels, prediction, num_classes,
                                          weights=jnp.broadcast_to(valid[:, None, None],
                                                                   labels.shape))
  return confusion, counts


class ElnReport(Hook):
  """After each evaluation from stage 2 on: the pseudo labels' quality on target val."""

  def __init__(self, config):
    self.config = config

  def after_eval(self, trainer, summary: dict) -> None:
    del summary
    eln = self.config.eln
    if trainer.step < eln.aux_from:
      return
    started = trainer.step > eln.self_training_from
    predictor = trainer.state.teacher if started else trainer.state.model
    predictor.eval()
    trainer.state.eln.eval()
    space = trainer.label_space
    confusion = np.zeros((space.num_classes, space.num_classes), np.int64)
    counts = np.zeros(4, np.int64)
    for batch in trainer.val_batches(desc="eln report"):
      batch_confusion, batch_counts = _report_batch(
          predictor, trainer.state.eln, batch["image"], batch["label"], batch["valid"],
          jnp.float32(eln.keep_threshold), space.num_classes)
      confusion += sharding.to_host(batch_confusion).astype(np.int64)
      counts += sharding.to_host(batch_counts).astype(np.int64)
    valid, correct, kept, kept_correct = (int(c) for c in counts)
    teacher = evaluation.summarize(confusion, space.eval_sets, space.class_names)
    record = {f"teacher_{name}": teacher[name] for name in space.eval_sets}
    record.update(
        pseudo_labels_from="teacher" if started else "student",
        kept_fraction=kept / max(valid, 1),
        kept_accuracy=kept_correct / kept if kept else float("nan"),
        all_accuracy=correct / max(valid, 1))
    trainer.log.write(trainer.step, KIND, record)
    tqdm.write(f"step {trainer.step}: {record['pseudo_labels_from']} mIoU "
               f"{record['teacher_miou']:.1f}; the ELN keeps {record['kept_fraction']:.1%} of "
               f"val pixels, pseudo-label accuracy {record['kept_accuracy']:.1%} on kept vs "
               f"{record['all_accuracy']:.1%} on all")
