"""ELN's losses: error-localisation targets, the auxiliary gate, pseudo labels, contrast, EMA.

Spec: ../shared/docs/eln-method.md ("Labelled losses", "Unlabelled losses", "ELN inside active
domain adaptation"). Every map is at one resolution already (logits NHWC and the ELN logit
[B, H, W] upsampled to label size by the caller); labels are integers [B, H, W] with
`IGNORE_INDEX` (255) for "no label". All functions are pure jax.numpy and compute in float32;
most are compiled per shape (jax.jit, flags static), so eager calls stay cheap and they nest
inside a jitted train step. Where the release and the paper differ, a keyword picks one; the
defaults follow the release unless the project's active-adaptation design says otherwise, and
each docstring says which is which.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ripu_jax import losses as ripu_losses
from ripu_jax.losses import safe_mean  # the mean that is 0, not NaN, over an empty set

IGNORE_INDEX = ripu_losses.IGNORE_INDEX

_HIGHEST = jax.lax.Precision.HIGHEST  # full float32 matmuls (no TF32) for cosines and sums


def _check_logits_labels(logits: jax.Array, labels: jax.Array) -> None:
  if logits.ndim != 4:
    raise ValueError(f"expected NHWC logits of rank 4, got shape {logits.shape}")
  if labels.shape != logits.shape[:3]:
    raise ValueError(
        f"labels must be [B, H, W] = {logits.shape[:3]} to match the logits, got {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")


def _check_map(name: str, array: jax.Array, shape: tuple[int, ...]) -> None:
  if array.shape != shape:
    raise ValueError(f"{name} must have shape {shape}, got {array.shape}")


# --- labelled losses ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("ignore_as_error",))
def correctness_target(
    logits: jax.Array, labels: jax.Array, *, ignore_as_error: bool
) -> tuple[jax.Array, jax.Array]:
  """The ELN's target M (1 where argmax(logits) == label, else 0) and the pixels it covers.

  ignore_as_error=True is the release: every pixel is valid, and a pixel labelled 255 (or any
  label outside [0, C)) can never match, so it counts as an error (M = 0).
  ignore_as_error=False is the project's active-adaptation reading: only pixels with a label in
  [0, C) are valid; the rest are left out of the loss and of the counts n0, n1.

  Returns:
    (target, valid): float32 [B, H, W] in {0, 1} (no gradient) and bool [B, H, W].
  """
  _check_logits_labels(logits, labels)
  num_classes = logits.shape[-1]
  prediction = jnp.argmax(jax.lax.stop_gradient(logits.astype(jnp.float32)), axis=-1)
  target = (prediction == labels).astype(jnp.float32)
  if ignore_as_error:
    valid = jnp.ones(labels.shape, jnp.bool_)
  else:
    valid = (labels != IGNORE_INDEX) & (labels >= 0) & (labels < num_classes)
  return target, valid


@functools.partial(jax.jit, static_argnames=("skip_empty_scaling",))
def class_balanced_bce(
    eln_logits: jax.Array,
    target: jax.Array,
    valid: jax.Array,
    *,
    skip_empty_scaling: bool = True,
) -> jax.Array:
  """Per-pixel BCE with logits, target-0 pixels scaled by n1 / n0, mean over valid pixels.

  n1 and n0 count the valid pixels with target 1 and 0 over the whole batch; the scale carries no
  gradient. The BCE is the stable form max(x, 0) - x y + log1p(exp(-|x|)). The release averages
  over all pixels, which is the same thing when every pixel is valid (`ignore_as_error=True`).

  Empty counts. With n0 == 0 no pixel is scaled, so any scale gives the same value: 1 is used
  (the release divides by zero there and stops). With n1 == 0 and n0 > 0, the release's n1 / n0
  is exactly 0, so the loss is 0: that is `skip_empty_scaling=False`. `skip_empty_scaling=True`
  (the project's design: skip the scaling when either count is 0) uses scale 1 instead, a plain
  BCE mean that still teaches the ELN "all wrong". Both agree with the release whenever both
  counts are positive. No valid pixel gives 0, not NaN.

  Args:
    eln_logits: float [B, H, W], the ELN's logit that the prediction is right.
    target: [B, H, W] in {0, 1} (see `correctness_target`).
    valid: bool [B, H, W], pixels that take part in the loss and the counts.
  Returns:
    A float32 scalar.
  """
  if eln_logits.ndim != 3:
    raise ValueError(f"eln_logits must be [B, H, W], got shape {eln_logits.shape}")
  _check_map("target", target, eln_logits.shape)
  _check_map("valid", valid, eln_logits.shape)
  x = eln_logits.astype(jnp.float32)
  y = jax.lax.stop_gradient(target.astype(jnp.float32))
  valid = valid.astype(jnp.bool_)
  bce = jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
  positive = valid & (y > 0.5)
  negative = valid & (y <= 0.5)
  n1 = jnp.sum(positive).astype(jnp.float32)
  n0 = jnp.sum(negative).astype(jnp.float32)
  ratio = n1 / jnp.maximum(n0, 1.0)
  if skip_empty_scaling:
    scale = jnp.where((n0 > 0) & (n1 > 0), ratio, 1.0)
  else:
    scale = jnp.where(n0 > 0, ratio, 1.0)
  weight = jnp.where(negative, jax.lax.stop_gradient(scale), 1.0)
  total = jnp.sum(jnp.where(valid, weight * bce, 0.0))
  return safe_mean(total, jnp.sum(valid))


@functools.partial(
    jax.jit, static_argnames=("ignore_as_error", "reduce", "skip_empty_scaling"))
def eln_loss(
    eln_logits: jax.Array | Sequence[jax.Array],
    predictions: Sequence[jax.Array],
    labels: jax.Array,
    *,
    ignore_as_error: bool,
    reduce: str = "sum",
    skip_empty_scaling: bool = True,
) -> jax.Array:
  """L_ELN: `class_balanced_bce` of the ELN's logit against each prediction's correctness.

  `predictions` are the logits (aux 1, ..., aux K, main; NHWC at label size) the ELN judged; no
  gradient reaches them. The ELN sees the prediction it judges, so `eln_logits` is normally one
  [B, H, W] logit per prediction (a sequence of the same length, as the release computes
  ELN(x, P^k) for each k); a single [B, H, W] array is used against every prediction.
  reduce="sum" adds the K + 1 terms (the release), "mean" averages them (the paper).
  """
  if reduce not in ("sum", "mean"):
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
  if not predictions:
    raise ValueError("predictions must hold at least one logits map")
  if isinstance(eln_logits, (list, tuple)):
    if len(eln_logits) != len(predictions):
      raise ValueError(
          f"need one ELN logit per prediction: {len(eln_logits)} logits, "
          f"{len(predictions)} predictions")
  else:
    eln_logits = [eln_logits] * len(predictions)
  terms = []
  for logit, logits in zip(eln_logits, predictions):
    _check_logits_labels(logits, labels)
    target, valid = correctness_target(logits, labels, ignore_as_error=ignore_as_error)
    terms.append(class_balanced_bce(logit, target, valid, skip_empty_scaling=skip_empty_scaling))
  total = jnp.sum(jnp.stack(terms))
  return total / len(terms) if reduce == "mean" else total


@functools.partial(jax.jit, static_argnames=("ignore_index",))
def per_image_cross_entropy(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Softmax CE averaged over each image's valid pixels: float32 [B] (0 for an image with none).

  Valid as in `ripu_jax.losses.cross_entropy`: label != ignore_index and inside [0, C).
  """
  _check_logits_labels(logits, labels)
  picked, valid = ripu_losses.label_log_likelihood(logits, labels, ignore_index)
  return safe_mean(-jnp.sum(picked, axis=(1, 2)), jnp.sum(valid, axis=(1, 2)))


@functools.partial(jax.jit, static_argnames=("per_image",))
def aux_gate(
    aux_ce: jax.Array, sup_ce: jax.Array, alpha: float, *, per_image: bool = False) -> jax.Array:
  """g = 1 iff the auxiliary CE reaches alpha times the supervised CE (float32 0/1, no gradient).

  Batch mode (the release): scalar batch-mean CEs, aux_ce >= alpha * sup_ce. Per-image mode
  (the paper): [B] per-image CEs, strict aux_ce > alpha * sup_ce, one gate per image.
  """
  aux_ce = jnp.asarray(aux_ce, jnp.float32)
  sup_ce = jnp.asarray(sup_ce, jnp.float32)
  if per_image:
    if aux_ce.ndim != 1 or aux_ce.shape != sup_ce.shape:
      raise ValueError(
          f"per-image gating needs two [B] arrays, got {aux_ce.shape} and {sup_ce.shape}")
  elif aux_ce.ndim != 0 or sup_ce.ndim != 0:
    raise ValueError(
        f"batch gating needs two scalars, got shapes {aux_ce.shape} and {sup_ce.shape}")
  aux_ce = jax.lax.stop_gradient(aux_ce)
  bound = alpha * jax.lax.stop_gradient(sup_ce)
  gate = aux_ce > bound if per_image else aux_ce >= bound
  return gate.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("per_image",))
def gated_aux_loss(
    aux_logits_list: Sequence[jax.Array],
    labels: jax.Array,
    sup_ce: jax.Array,
    alphas: Sequence[float],
    *,
    per_image: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """L_aux = sum_k g_k CE(P^k, Y), each gate against alpha_k times the supervised CE.

  Batch mode (the release): `sup_ce` is the batch-mean L_sup (scalar), CE_k the batch-mean CE of
  aux head k. Per-image mode (the paper): `sup_ce` is L_sup per image [B] (see
  `per_image_cross_entropy`) and the term is mean_i g_k,i CE_k,i over the B images.

  Returns:
    (loss, gates): a float32 scalar and the float32 gates, [K] (batch) or [K, B] (per image).
  """
  if not aux_logits_list:
    raise ValueError("aux_logits_list must hold at least one logits map")
  if len(alphas) != len(aux_logits_list):
    raise ValueError(
        f"need one alpha per auxiliary head: {len(aux_logits_list)} heads, {len(alphas)} alphas")
  total = jnp.zeros((), jnp.float32)
  gates = []
  for logits, alpha in zip(aux_logits_list, alphas):
    if per_image:
      ce = per_image_cross_entropy(logits, labels)
      gate = aux_gate(ce, sup_ce, alpha, per_image=True)
      total = total + jnp.mean(gate * ce)
    else:
      ce = ripu_losses.cross_entropy(logits, labels)
      gate = aux_gate(ce, sup_ce, alpha)
      total = total + gate * ce
    gates.append(gate)
  return total, jnp.stack(gates)


# --- unlabelled losses -------------------------------------------------------------------------


@jax.jit
def keep_mask(eln_logits: jax.Array, threshold: float = 0.5) -> jax.Array:
  """Pixels the ELN trusts: sigmoid(eln_logits) > threshold, bool, same shape."""
  return jax.nn.sigmoid(jnp.asarray(eln_logits, jnp.float32)) > threshold


@jax.jit
def pseudo_labels(
    teacher_logits: jax.Array, keep: jax.Array, exclude: jax.Array | None = None) -> jax.Array:
  """int32 [B, H, W]: the teacher's argmax where `keep` (and not `exclude`), 255 elsewhere.

  `exclude` marks pixels that must not get a pseudo label, e.g. actively labelled ones.
  """
  if teacher_logits.ndim != 4:
    raise ValueError(f"expected NHWC teacher logits of rank 4, got shape {teacher_logits.shape}")
  shape = teacher_logits.shape[:3]
  _check_map("keep", keep, shape)
  use = keep.astype(jnp.bool_)
  if exclude is not None:
    _check_map("exclude", exclude, shape)
    use = use & ~exclude.astype(jnp.bool_)
  prediction = jnp.argmax(teacher_logits.astype(jnp.float32), axis=-1).astype(jnp.int32)
  return jnp.where(use, prediction, jnp.int32(IGNORE_INDEX))


@functools.partial(
    jax.jit, static_argnames=("num_windows", "height", "width", "window"))
def random_window_corners(
    key: jax.Array, num_windows: int, height: int, width: int, window: int) -> jax.Array:
  """int32 [num_windows, 2] top-left (row, col) corners, uniform over the valid positions.

  The window is clipped to the map (min(window, height) x min(window, width)), so a map smaller
  than the window has the single corner (0, 0) along that axis.
  """
  if num_windows < 1 or height < 1 or width < 1 or window < 1:
    raise ValueError(
        "num_windows, height, width and window must be positive, got "
        f"{num_windows}, {height}, {width}, {window}")
  row_key, col_key = jax.random.split(key)
  rows = jax.random.randint(row_key, (num_windows,), 0, height - min(window, height) + 1)
  cols = jax.random.randint(col_key, (num_windows,), 0, width - min(window, width) + 1)
  return jnp.stack([rows, cols], axis=-1).astype(jnp.int32)


def _l2_normalise(x: jax.Array) -> jax.Array:
  """x / max(|x|, 1e-8) along the last axis.

  The clamp sits inside the square root, so a zero vector gets a zero (not NaN) gradient.
  """
  squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared, 1e-16))


def _window_loss(
    student: jax.Array, teacher: jax.Array, labels: jax.Array, num_classes: int,
    temperature: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One window's loss (mean over its present classes) and whether any class is present.

  student, teacher: [N, D]; labels: [N]. E = exp(cos / tau) over all anchor-key pairs [N, N];
  with A the [N, C] kept-class indicators, (A^T E A)[c, c'] sums E over anchors of c and keys of
  c', so its diagonal is S+ and its row sum S+ + S-.
  """
  kept = (labels >= 0) & (labels < num_classes)
  indicators = jax.nn.one_hot(jnp.where(kept, labels, 0), num_classes, dtype=jnp.float32)
  indicators = indicators * kept[:, None].astype(jnp.float32)
  cosine = jnp.dot(_l2_normalise(student), _l2_normalise(teacher).T, precision=_HIGHEST)
  similarity = jnp.exp(cosine / temperature)
  per_anchor = jnp.dot(similarity, indicators, precision=_HIGHEST)  # [N, C]: keys of class c'
  pair_sums = jnp.dot(indicators.T, per_anchor, precision=_HIGHEST)  # [C, C]
  positive = jnp.diagonal(pair_sums)
  everything = jnp.sum(pair_sums, axis=1)
  count = jnp.sum(indicators, axis=0)
  present = count > 0
  log_ratio = jnp.log(jnp.where(present, everything, 1.0)) - jnp.log(
      jnp.where(present, positive, 1.0))
  per_class = jnp.where(present, log_ratio / jnp.maximum(count, 1.0), 0.0)
  num_present = jnp.sum(present)
  loss = safe_mean(jnp.sum(per_class), num_present)
  return loss, num_present > 0


def window_contrastive_loss(
    student_features: jax.Array,
    teacher_features: jax.Array,
    pseudo_labels: jax.Array,  # pylint: disable=redefined-outer-name
    window_corners: jax.Array,
    *,
    num_classes: int,
    window: int = 32,
    temperature: float = 0.5,
    skip_empty_windows: bool = False,
) -> jax.Array:
  """L_con, the release's windowed class-level contrast on stride-4 feature maps.

  For each window (the same crop for every image of the batch, pixels of all images pooled) and
  each kept class c in it: anchors are the L2-normalised student features of c, positives the
  normalised teacher features of c, negatives the teacher features of the other kept classes;
  with S+ / S- the sums of exp(cos / tau) over all anchor-positive / anchor-negative pairs and
  n_c the anchor count, loss_c = -ln(S+ / (S+ + S-)) / n_c. A window's loss is the mean over its
  present classes (a class alone in its window has S- = 0 and adds 0); the result is the mean
  over windows. A window without any kept pixel adds 0 and, as in the release, still counts in
  that mean (skip_empty_windows=False); skip_empty_windows=True averages over the non-empty
  windows only. No kept pixel anywhere gives 0. No gradient reaches the teacher features.

  The window is clipped to the map (min(window, h) x min(window, w)); corners outside the valid
  range are clamped into it. Memory: one window holds N = B * window^2 pixels and its [N, N]
  float32 similarity matrix (B = 8, 32 x 32: N = 8192, 256 MiB per buffer); windows run one at a
  time (lax.map) and are recomputed in the backward pass (jax.checkpoint), so the peak is a few
  such buffers whatever the number of windows.

  Args:
    student_features, teacher_features: float [B, h, w, D].
    pseudo_labels: int [B, h, w]; 255 (or anything outside [0, num_classes)) = not kept.
    window_corners: int [W, 2] top-left (row, col) per window (see `random_window_corners`).
  Returns:
    A float32 scalar.
  """
  if student_features.ndim != 4:
    raise ValueError(f"features must be [B, h, w, D], got shape {student_features.shape}")
  _check_map("teacher_features", teacher_features, student_features.shape)
  _check_map("pseudo_labels", pseudo_labels, student_features.shape[:3])
  if not jnp.issubdtype(pseudo_labels.dtype, jnp.integer):
    raise ValueError(f"pseudo_labels must be integers, got {pseudo_labels.dtype}")
  if window_corners.ndim != 2 or window_corners.shape[1] != 2 or window_corners.shape[0] < 1:
    raise ValueError(f"window_corners must be [W >= 1, 2], got shape {window_corners.shape}")
  if not jnp.issubdtype(window_corners.dtype, jnp.integer):
    raise ValueError(f"window_corners must be integers, got {window_corners.dtype}")
  if window < 1 or num_classes < 1:
    raise ValueError(f"window and num_classes must be positive, got {window}, {num_classes}")
  if isinstance(temperature, numbers.Real) and not temperature > 0:
    raise ValueError(f"temperature must be positive, got {temperature!r}")

  height, width = student_features.shape[1:3]
  return _window_contrastive(
      student_features.astype(jnp.float32), teacher_features.astype(jnp.float32),
      pseudo_labels.astype(jnp.int32), window_corners.astype(jnp.int32),
      jnp.asarray(temperature, jnp.float32), rows=min(window, height), cols=min(window, width),
      num_classes=num_classes, skip_empty_windows=skip_empty_windows)


@functools.partial(
    jax.jit, static_argnames=("rows", "cols", "num_classes", "skip_empty_windows"))
def _window_contrastive(
    student: jax.Array, teacher: jax.Array, labels: jax.Array, corners: jax.Array,
    temperature: jax.Array, *, rows: int, cols: int, num_classes: int,
    skip_empty_windows: bool) -> jax.Array:
  """`window_contrastive_loss` on checked float32 / int32 inputs, compiled once per shape."""
  batch, _, _, depth = student.shape
  teacher = jax.lax.stop_gradient(teacher)

  def one_window(corner: jax.Array) -> tuple[jax.Array, jax.Array]:
    row, col = corner[0], corner[1]
    zero = jnp.int32(0)

    def crop(features: jax.Array) -> jax.Array:
      return jax.lax.dynamic_slice(
          features, (zero, row, col, zero), (batch, rows, cols, depth)).reshape(-1, depth)

    window_labels = jax.lax.dynamic_slice(
        labels, (zero, row, col), (batch, rows, cols)).reshape(-1)
    return _window_loss(crop(student), crop(teacher), window_labels, num_classes, temperature)

  losses, non_empty = jax.lax.map(jax.checkpoint(one_window), corners)
  if skip_empty_windows:
    return safe_mean(jnp.sum(losses), jnp.sum(non_empty))
  return jnp.mean(losses)


# --- teacher and ELN input ---------------------------------------------------------------------


def ema_update(teacher_params, student_params, decay):
  """theta~ <- decay * theta~ + (1 - decay) * theta, leaf by leaf over matching pytrees.

  Both trees must have the same structure and shapes, with floating leaves; the result is
  float32. A Python-number decay must lie in (0, 1); a traced one is taken as given.
  """
  if isinstance(decay, numbers.Real) and not 0.0 < float(decay) < 1.0:
    raise ValueError(f"decay must lie in (0, 1), got {decay!r}")
  teacher_leaves, teacher_def = jax.tree.flatten(teacher_params)
  student_leaves, student_def = jax.tree.flatten(student_params)
  if teacher_def != student_def:
    raise ValueError(
        f"teacher and student trees differ:\n  teacher {teacher_def}\n  student {student_def}")
  decay = jnp.asarray(decay, jnp.float32)
  updated = []
  for teacher, student in zip(teacher_leaves, student_leaves):
    teacher, student = jnp.asarray(teacher), jnp.asarray(student)
    if teacher.shape != student.shape:
      raise ValueError(f"leaf shapes differ: teacher {teacher.shape}, student {student.shape}")
    if not (jnp.issubdtype(teacher.dtype, jnp.floating)
            and jnp.issubdtype(student.dtype, jnp.floating)):
      raise ValueError(
          f"EMA needs floating leaves, got teacher {teacher.dtype}, student {student.dtype}")
    updated.append(
        decay * teacher.astype(jnp.float32) + (1.0 - decay) * student.astype(jnp.float32))
  return jax.tree.unflatten(teacher_def, updated)


@jax.jit
def entropy_map(logits: jax.Array) -> jax.Array:
  """Per-pixel entropy -sum_c p ln p of NHWC logits: float32 [B, H, W], one of the ELN's inputs.

  Written with log_softmax, so it stays finite for any finite logits.
  """
  if logits.ndim != 4:
    raise ValueError(f"expected NHWC logits of rank 4, got shape {logits.shape}")
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
