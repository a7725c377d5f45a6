"""Patch n' Pack (NaViT): images of any size, as patch sequences, packed into fixed-length rows.

An image becomes a :class:`PatchedImage` (its patches, their (y, x) grid coordinates, its grid
size and per-image features such as a label). Rows of ``seq_len`` tokens hold up to
``max_images`` images each; :func:`pack_rows` writes a list of rows into the arrays that
``palix.models.vit.ViT.encode_packed`` reads:

================  =======  ================  ===================================================
key               dtype    shape             meaning
================  =======  ================  ===================================================
``patches``       float32  [R, L, p*p*3]     patch pixels (0 for padding tokens)
``image_ids``     int32    [R, L]            0 = padding, k = the image in slot k-1
``ys``, ``xs``    int32    [R, L]            each token's patch coordinates in its image
``grid_sizes``    int32    [R, K, 2]         each slot's patch grid (gh, gw); 0 when empty
``image_mask``    int32    [R, K]            1 for a real image, 0 for an empty slot
(features)        any      [R, K]            one value per slot, e.g. ``labels`` (0 when empty)
================  =======  ================  ===================================================

Which images share a step is decided before packing, by the batch schedule (a fixed *window* of
images per step), so a packed stream stays a pure function of the step: :class:`WindowPacker`
packs step ``j`` from windows ``j - 1`` and ``j`` only (see its docstring for the carry-over and
drop rules). Nothing here is specific to classification or to TensorFlow: the options below are
plain dataclasses, and the packing is numpy.
"""

import dataclasses
import logging
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from palix.tasks import media_io

DataError = media_io.DataError
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Resolution:
  """The size of each image in a packed stream, set by its longest side (aspect ratio kept).

  Attributes:
    max_side: the longest side never exceeds this many pixels (larger images are shrunk); it
      bounds the patch grid at ``max_side / patch_size`` per side.
    train_sides: ``(low, high)``: in training the longest side is drawn per image, uniformly
      from ``[low, high]`` (resolution sampling); None: native size (capped at ``max_side``).
    eval_side: the longest side at evaluation; None: native size (capped at ``max_side``).
  """
  max_side: int = 64
  train_sides: Optional[Tuple[int, int]] = None
  eval_side: Optional[int] = None

  def check(self, patch_size: int) -> None:
    if self.max_side < patch_size:
      raise ValueError(f"Resolution.max_side {self.max_side} is less than the patch size "
                       f"{patch_size}")
    if self.train_sides is not None:
      low, high = self.train_sides
      if not patch_size <= low <= high <= self.max_side:
        raise ValueError(f"Resolution.train_sides {tuple(self.train_sides)} must satisfy "
                         f"patch_size ({patch_size}) <= low <= high <= max_side ({self.max_side})")
    if self.eval_side is not None and not patch_size <= self.eval_side <= self.max_side:
      raise ValueError(f"Resolution.eval_side {self.eval_side} must be in [patch_size, max_side] "
                       f"= [{patch_size}, {self.max_side}]")


@dataclasses.dataclass(frozen=True)
class TokenDropping:
  """Continuous token dropping in training: each image drops a random share of its patches.

  The share is ``rate``, or drawn per image from ``Beta(*beta)`` when ``beta`` is set; with
  ``reference_tokens`` it is scaled by ``tokens / reference_tokens`` (images with more patches
  drop more), and it is capped at ``max_rate``. An image keeps
  ``max(1, tokens - round(share * tokens))`` patches, chosen at random, with their coordinates.
  Evaluation never drops.
  """
  rate: float = 0.0
  beta: Optional[Tuple[float, float]] = None
  reference_tokens: Optional[int] = None
  max_rate: float = 0.9

  def check(self) -> None:
    for name in ("rate", "max_rate"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ValueError(f"TokenDropping.{name} = {value}: a token-drop rate must be in [0, 1)")
    if self.beta is not None and (len(self.beta) != 2 or min(self.beta) <= 0):
      raise ValueError(f"TokenDropping.beta = {self.beta}: expected (a, b) with a, b > 0")
    if self.reference_tokens is not None and self.reference_tokens < 1:
      raise ValueError(f"TokenDropping.reference_tokens = {self.reference_tokens}: must be >= 1")

  @property
  def enabled(self) -> bool:
    return self.rate > 0 or self.beta is not None


@dataclasses.dataclass(frozen=True)
class PackingOptions:
  """How a stream of images becomes packed rows.

  Attributes:
    patch_size: pixels per patch side (the ViT's).
    seq_len: tokens per row (L).
    max_images: image slots per row (K).
    images_per_row: images scheduled per row and step: a step's window holds
      ``round(images_per_row * rows)`` images. Pick it so that a window's tokens slightly exceed
      the step's ``rows * seq_len``; ``python -m palix.eval.perf.packing`` measures the fill and
      the carried-over and dropped counts of a setting.
    resolution: image sizes (:class:`Resolution`).
    token_dropping: training-time token dropping (:class:`TokenDropping`).
    min_kept_share: in training, an image carried over from the previous step that fits no gap
      of its new step is *trimmed* to the largest gap (a random subset of its patches, with
      their coordinates: token dropping as the packing fallback) if it keeps at least this share
      of its patches; otherwise it is dropped. None: never trim. Evaluation never trims.
  """
  patch_size: int = 16
  seq_len: int = 256
  max_images: int = 16
  images_per_row: float = 4.0
  resolution: Resolution = Resolution()
  token_dropping: TokenDropping = TokenDropping()
  min_kept_share: Optional[float] = 0.5

  def check(self) -> None:
    if self.patch_size < 1 or self.seq_len < 1 or self.max_images < 1:
      raise ValueError(f"PackingOptions: patch_size, seq_len and max_images must be positive; got "
                       f"{self.patch_size}, {self.seq_len}, {self.max_images}")
    if self.images_per_row <= 0:
      raise ValueError(f"PackingOptions.images_per_row must be positive; got "
                       f"{self.images_per_row}")
    if self.min_kept_share is not None and not 0 < self.min_kept_share <= 1:
      raise ValueError(f"PackingOptions.min_kept_share must be in (0, 1] or None; got "
                       f"{self.min_kept_share}")
    self.resolution.check(self.patch_size)
    self.token_dropping.check()

  def window(self, rows: int) -> int:
    """Images scheduled per step of ``rows`` rows."""
    return max(1, int(round(self.images_per_row * rows)))


@dataclasses.dataclass(frozen=True)
class PatchedImage:
  """One image as a token sequence, with its per-image features (e.g. ``{'labels': 3}``)."""
  patches: np.ndarray  # float32 [n, p*p*3]
  ys: np.ndarray       # int32 [n]
  xs: np.ndarray       # int32 [n]
  grid: Tuple[int, int]
  features: Mapping[str, Any]
  record_id: str = ""

  @property
  def num_tokens(self) -> int:
    return len(self.patches)


def check_image(image: PatchedImage, seq_len: int) -> None:
  """An image must have at least one token and fit a row: errors name the image and the limit."""
  gh, gw = image.grid
  if image.num_tokens < 1 or gh < 1 or gw < 1:
    raise DataError(f"{image.record_id}: zero-sized image (patch grid {gh}x{gw}, "
                    f"{image.num_tokens} tokens)")
  if image.num_tokens > seq_len:
    raise DataError(f"{image.record_id}: {image.num_tokens} patches (grid {gh}x{gw}) exceed the "
                    f"sequence length {seq_len}; raise PackingOptions.seq_len or lower "
                    "Resolution.max_side")


def first_fit_decreasing(images: Sequence[PatchedImage], rows: List[List[PatchedImage]], *,
                         seq_len: int, max_images: int) -> List[PatchedImage]:
  """Adds ``images`` to ``rows`` (in place), largest first, each to the first row with room for
  its tokens and a free slot; returns the images that fit nowhere, in their input order."""
  used = [sum(image.num_tokens for image in row) for row in rows]
  order = sorted(range(len(images)), key=lambda i: -images[i].num_tokens)  # stable: ties in order
  left = []
  for i in order:
    image = images[i]
    for r, row in enumerate(rows):
      if used[r] + image.num_tokens <= seq_len and len(row) < max_images:
        row.append(image)
        used[r] += image.num_tokens
        break
    else:
      left.append(i)
  return [images[i] for i in sorted(left)]


def trim(image: PatchedImage, keep: int) -> PatchedImage:
  """``image`` with ``keep`` of its patches (a random subset seeded by its record id, in their
  original order, coordinates kept)."""
  rng = np.random.default_rng(zlib.crc32(image.record_id.encode("utf-8")))  # same in every run
  kept = np.sort(rng.permutation(image.num_tokens)[:keep])
  return dataclasses.replace(image, patches=image.patches[kept], ys=image.ys[kept],
                             xs=image.xs[kept])


def pack_rows(rows: Sequence[Sequence[PatchedImage]], *, seq_len: int, max_images: int,
              patch_dim: int, feature_dtypes: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """The arrays of the module docstring for ``rows`` (each a list of images, in slot order).

  Raises:
    DataError: a row with more images than ``max_images`` or more tokens than ``seq_len`` (the
      error names the row, its images and the limit), or an image without tokens.
  """
  num_rows = len(rows)
  out = {"patches": np.zeros((num_rows, seq_len, patch_dim), np.float32),
         "image_ids": np.zeros((num_rows, seq_len), np.int32),
         "ys": np.zeros((num_rows, seq_len), np.int32),
         "xs": np.zeros((num_rows, seq_len), np.int32),
         "grid_sizes": np.zeros((num_rows, max_images, 2), np.int32),
         "image_mask": np.zeros((num_rows, max_images), np.int32)}
  for key, dtype in feature_dtypes.items():
    out[key] = np.zeros((num_rows, max_images), dtype)
  for r, row in enumerate(rows):
    names = ", ".join(image.record_id for image in row)
    if len(row) > max_images:
      raise DataError(f"packed row {r} has {len(row)} images ({names}); a row holds at most "
                      f"max_images={max_images}")
    total = sum(image.num_tokens for image in row)
    if total > seq_len:
      raise DataError(f"packed row {r} has {total} tokens ({names}); a row holds at most "
                      f"seq_len={seq_len}")
    start = 0
    for slot, image in enumerate(row):
      check_image(image, seq_len)
      if image.patches.shape[1] != patch_dim:
        raise DataError(f"{image.record_id}: patches of {image.patches.shape[1]} values; the "
                        f"packed rows hold {patch_dim} (patch_size^2 * 3)")
      end = start + image.num_tokens
      out["patches"][r, start:end] = image.patches
      out["ys"][r, start:end] = image.ys
      out["xs"][r, start:end] = image.xs
      out["image_ids"][r, start:end] = slot + 1
      out["grid_sizes"][r, slot] = image.grid
      out["image_mask"][r, slot] = 1
      for key in feature_dtypes:
        out[key][r, slot] = image.features[key]
      start = end
  return out


@dataclasses.dataclass
class PackingStats:
  """What a packed stream did: images placed, carried over to the next step, dropped (and why),
  and the share of the rows' token capacity holding real tokens."""
  steps: int = 0
  images: int = 0
  tokens: int = 0
  capacity: int = 0
  carried_over: int = 0
  trimmed: int = 0
  trimmed_tokens: int = 0
  dropped: int = 0
  dropped_examples: List[str] = dataclasses.field(default_factory=list)

  @property
  def non_pad_fraction(self) -> float:
    return self.tokens / self.capacity if self.capacity else 0.0

  def summary(self) -> str:
    text = (f"{self.steps} packed steps: {self.images} images, non-pad tokens "
            f"{100 * self.non_pad_fraction:.1f}%, {self.carried_over} carried over to the next "
            f"step, {self.trimmed} of them trimmed (-{self.trimmed_tokens} tokens), "
            f"{self.dropped} dropped")
    if self.dropped_examples:
      text += f" (first: {self.dropped_examples[0]})"
    return text

  def record_step(self, rows: Sequence[Sequence[PatchedImage]], seq_len: int) -> None:
    self.steps += 1
    self.images += sum(len(row) for row in rows)
    self.tokens += sum(image.num_tokens for row in rows for image in row)
    self.capacity += len(rows) * seq_len


class WindowPacker:
  """Packs the images scheduled for each step into ``rows`` rows.

  Training (``carry_all=False``): step ``j`` first packs its own window (first fit, largest
  first, into empty rows); the images of the window that do not fit are *carried over* into step
  ``j + 1``, which packs them into the space its own window leaves; an image that does not fit
  there either is *trimmed* to the largest gap (when it keeps at least ``min_kept_share`` of its
  patches) or *dropped* (counted in :class:`PackingStats`, logged with its record id and the
  reason). Step ``j`` is therefore a function of windows ``j - 1`` and ``j`` alone, and a
  stream resumed at step ``k`` rebuilds exactly the carry-over of step ``k - 1`` from its window
  (:meth:`leftover`).

  Finite passes (``carry_all=True``, evaluation): nothing is dropped; images that do not fit wait
  and are packed again with the next window (all of them largest first), and :meth:`flush` packs
  what is left after the last window.
  """

  def __init__(self, *, rows: int, seq_len: int, max_images: int,
               stats: Optional[PackingStats] = None, carry_all: bool = False,
               min_kept_share: Optional[float] = None):
    self.rows, self.seq_len, self.max_images = rows, seq_len, max_images
    self.min_kept_share = min_kept_share
    self.stats = stats if stats is not None else PackingStats()
    self.carry_all = carry_all
    self._logged_drop = False

  def _fit(self, images, rows):
    for image in images:
      check_image(image, self.seq_len)
    return first_fit_decreasing(images, rows, seq_len=self.seq_len, max_images=self.max_images)

  def leftover(self, window: Sequence[PatchedImage]) -> List[PatchedImage]:
    """The images of ``window`` that its own step could not place (what step ``j+1`` carries)."""
    return self._fit(window, [[] for _ in range(self.rows)])

  def step(self, window: Sequence[PatchedImage], carried: Sequence[PatchedImage]
           ) -> Tuple[List[List[PatchedImage]], List[PatchedImage]]:
    """``(rows, carry)``: this step's rows and the images carried into the next step."""
    rows = [[] for _ in range(self.rows)]
    if self.carry_all:
      carry = self._fit(list(carried) + list(window), rows)
    else:
      carry = self._fit(window, rows)
      for image in self._fit(carried, rows):
        self._trim_or_drop(image, rows)
    self.stats.record_step(rows, self.seq_len)
    scheduled_now = {id(image) for image in window}  # an image waiting again is counted once
    self.stats.carried_over += sum(id(image) in scheduled_now for image in carry)
    return rows, carry

  def flush(self, carried: Sequence[PatchedImage]):
    """Rows of the images still waiting after the last window (``carry_all`` only)."""
    carried = list(carried)
    while carried:
      rows, carried = self.step([], carried)
      yield rows

  def _trim_or_drop(self, image: PatchedImage, rows: List[List[PatchedImage]]) -> None:
    free = [self.seq_len - sum(i.num_tokens for i in row) if len(row) < self.max_images else 0
            for row in rows]
    best = int(np.argmax(free))  # the first row with the largest gap
    if (self.min_kept_share is not None and free[best] >= 1
        and free[best] >= self.min_kept_share * image.num_tokens):
      rows[best].append(trim(image, free[best]))
      self.stats.trimmed += 1
      self.stats.trimmed_tokens += image.num_tokens - free[best]
      return
    self._drop(image)

  def _drop(self, image: PatchedImage) -> None:
    self.stats.dropped += 1
    reason = (f"{image.record_id} ({image.num_tokens} tokens) fitted neither its own step nor the "
              "next one; lower PackingOptions.images_per_row to schedule fewer images per step")
    if len(self.stats.dropped_examples) < 10:
      self.stats.dropped_examples.append(reason)
    if not self._logged_drop:
      logger.warning("packing dropped an image: %s (dropped images are counted in PackingStats)",
                     reason)
      self._logged_drop = True
