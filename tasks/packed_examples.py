"""Packing PaLI-X examples into rows (numpy): the layout of ``palix.models.packed_batch``.

An example (:class:`PackedExample`) is its images as patch sequences (each at its own size), its
prompt and its target tokens. It needs room in one row of each sequence of a packed batch:

* the ViT row: one segment per image, or one for all frames of a video clip (``clip``), each
  at most ``vit_length`` tokens, with one of the row's ``vit_slots`` per segment;
* the encoder row: its visual tokens plus its prompt (``input_length``), laid out by
  ``palix.models.palix_model.interleaved_order`` (the rule the model uses for one example per
  row: each ``<sep>``-ended text segment after its image);
* the decoder row: its targets (``target_length``); and one of the row's ``examples_per_row``
  example slots.

:func:`check_example` refuses an example that cannot fit any row, naming the task, the example
and the limit. :func:`pack_rows` writes rows of examples into the arrays; :class:`ExamplePacker`
packs the examples scheduled for each training step (first fit, largest first), carries what does
not fit into the next step and drops (counted, logged) what does not fit there either, so a step
depends on its own window and the one before it only (as ``palix.tasks.packing.WindowPacker``
does for images), which keeps packed streams deterministic and exactly resumable.
"""

import dataclasses
import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from palix.models import base
from palix.models.palix_model import interleaved_order
from palix.tasks import media_io

DataError = media_io.DataError
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PackedRows:
  """The sizes of a packed batch's rows (``palix.models.packed_batch``).

  Attributes:
    vit_length: ViT tokens per row (Lv).
    vit_slots: ViT segments per row (K): images, or whole video clips.
    input_length: encoder tokens per row (Le): visual tokens and prompts.
    target_length: decoder tokens per row (Ld).
    examples_per_row: example slots per row (S).
    patch_size: the ViT's patch size.
  """
  vit_length: int = 256
  vit_slots: int = 16
  input_length: int = 256
  target_length: int = 64
  examples_per_row: int = 16
  patch_size: int = 8

  def check(self) -> None:
    for name in ("vit_length", "vit_slots", "input_length", "target_length",
                 "examples_per_row", "patch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"PackedRows.{name} must be positive; got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class PackedStream:
  """How a training stream is packed (``palix.tasks.packed_batches``).

  Attributes:
    rows: the sizes of every row (:class:`PackedRows`); the number of rows is the batch size.
    examples_per_step: examples scheduled per step (and shard): the window. Pick it so that a
      window slightly overfills the rows; the stream's ``PackedStats`` (and ``make demo``'s
      printout) report fill, carry-over and drops.
    sides: ``{task: longest side in pixels}``: each task's images are resized, keeping their
      aspect ratio, so that their longest side is at most this (smaller images keep their size,
      rounded to whole patches).
    default_side: the side of tasks not in ``sides``.
    separator_id: the prompt's segment separator (``PaliXConfig.segment_separator_id``): text
      segments are interleaved with the images as the model does for one example per row.
  """
  rows: PackedRows = PackedRows()
  examples_per_step: int = 64
  sides: Mapping[str, int] = dataclasses.field(default_factory=dict)
  default_side: int = 32
  separator_id: Optional[int] = None

  def check(self) -> None:
    self.rows.check()
    if self.examples_per_step < 1:
      raise ValueError(f"PackedStream.examples_per_step must be positive; got "
                       f"{self.examples_per_step}")
    for task, side in {**dict(self.sides), "(default_side)": self.default_side}.items():
      if not isinstance(side, int) or side < self.rows.patch_size:
        raise ValueError(f"PackedStream.sides[{task!r}] = {side!r}: a side must be an integer "
                         f"of at least the patch size {self.rows.patch_size}")

  def side_of(self, task_name: str) -> int:
    return int(self.sides.get(task_name, self.default_side))


@dataclasses.dataclass(frozen=True)
class ImageTokens:
  """One image (or video frame) as a patch sequence at its own size."""
  patches: np.ndarray  # float32 [n, p*p*3]
  ys: np.ndarray       # int32 [n]
  xs: np.ndarray       # int32 [n]
  grid: Tuple[int, int]

  @property
  def num_tokens(self) -> int:
    return len(self.patches)


@dataclasses.dataclass(frozen=True)
class PackedExample:
  """One example of a task: images, prompt and target tokens (EOS included)."""
  images: Tuple[ImageTokens, ...]
  inputs: np.ndarray   # int32 prompt tokens
  targets: np.ndarray  # int32 target tokens
  task_id: int = 0
  task_name: str = ""
  record_id: str = ""
  clip: bool = False   # the images are the frames of one video clip: one ViT segment

  @property
  def num_visual(self) -> int:
    return sum(image.num_tokens for image in self.images)

  @property
  def encoder_length(self) -> int:
    return self.num_visual + len(self.inputs)

  @property
  def decoder_length(self) -> int:
    return len(self.targets)

  def vit_segments(self) -> List[int]:
    """Token counts of the example's ViT segments (one per image, or one per clip)."""
    if not self.images:
      return []
    if self.clip:
      return [self.num_visual]
    return [image.num_tokens for image in self.images]

  def describe(self) -> str:
    return f"task {self.task_name!r} example {self.record_id}"


def check_example(example: PackedExample, rows: PackedRows) -> None:
  """Raises a DataError naming the task, the example and the limit when ``example`` fits no row."""
  if example.encoder_length > rows.input_length:
    raise DataError(
        f"{example.describe()}: {example.num_visual} visual tokens + {len(example.inputs)} prompt "
        f"tokens = {example.encoder_length} exceed the packed encoder length "
        f"{rows.input_length} (PackedRows.input_length); lower the task's image side "
        "(PackedStream.sides) or raise input_length")
  for size in example.vit_segments():
    if size > rows.vit_length:
      what = "video clip" if example.clip else "image"
      raise DataError(
          f"{example.describe()}: an {what} of {size} patches exceeds the ViT sequence length "
          f"{rows.vit_length} (PackedRows.vit_length); lower the task's image side "
          "(PackedStream.sides) or raise vit_length")
  if len(example.vit_segments()) > rows.vit_slots:
    raise DataError(f"{example.describe()}: {len(example.images)} images need more than the "
                    f"{rows.vit_slots} ViT slots of a row (PackedRows.vit_slots)")
  if example.decoder_length > rows.target_length:
    raise DataError(f"{example.describe()}: {example.decoder_length} target tokens exceed the "
                    f"packed decoder length {rows.target_length} (PackedRows.target_length)")
  for image in example.images:
    if image.num_tokens < 1:
      raise DataError(f"{example.describe()}: an image without patches (grid {image.grid})")


def encoder_layout(example: PackedExample, separator_id: Optional[int]) -> np.ndarray:
  """The example's encoder sequence as indices into ``[visual tokens (image order), prompt]``:
  the model's :func:`interleaved_order` for one example (visual tokens first without a
  separator)."""
  total = example.encoder_length
  if separator_id is None or not example.images:
    return np.arange(total)
  counts = [image.num_tokens for image in example.images]
  image_mask = np.ones((1, len(counts)), np.int32)
  order = interleaved_order(image_mask, np.asarray(example.inputs, np.int32)[None], counts,
                            separator_id, xp=np)
  return order[0]  # every element is real: the layout is the whole order


class _RowSpace:
  """What a row has used of each sequence."""

  def __init__(self):
    self.examples: List[PackedExample] = []
    self.vit = self.vit_slots = self.encoder = self.decoder = 0

  def fits(self, example: PackedExample, rows: PackedRows) -> bool:
    segments = example.vit_segments()
    return (len(self.examples) < rows.examples_per_row
            and self.encoder + example.encoder_length <= rows.input_length
            and self.decoder + example.decoder_length <= rows.target_length
            and self.vit + sum(segments) <= rows.vit_length
            and self.vit_slots + len(segments) <= rows.vit_slots)

  def add(self, example: PackedExample) -> None:
    self.examples.append(example)
    self.vit += example.num_visual
    self.vit_slots += len(example.vit_segments())
    self.encoder += example.encoder_length
    self.decoder += example.decoder_length


def first_fit_decreasing(examples: Sequence[PackedExample], spaces: List[_RowSpace],
                         rows: PackedRows) -> List[PackedExample]:
  """Adds ``examples`` to the rows, longest encoder sequence first, each to the first row with
  room for it in every sequence; returns those that fit nowhere, in their input order."""
  order = sorted(range(len(examples)), key=lambda i: -examples[i].encoder_length)  # stable
  left = []
  for i in order:
    for space in spaces:
      if space.fits(examples[i], rows):
        space.add(examples[i])
        break
    else:
      left.append(i)
  return [examples[i] for i in sorted(left)]


def pack_rows(row_examples: Sequence[Sequence[PackedExample]], rows: PackedRows,
              separator_id: Optional[int] = None, bos_id: int = 0) -> Dict[str, np.ndarray]:
  """The arrays of ``palix.models.packed_batch`` for ``row_examples`` (each row's examples in
  segment order). Raises DataError for an example that does not fit (:func:`check_example`) or
  a row that overflows."""
  b, p2c = len(row_examples), rows.patch_size ** 2 * 3
  out = {"patches": np.zeros((b, rows.vit_length, p2c), np.float32),
         "grid_sizes": np.zeros((b, rows.vit_slots, 2), np.int32),
         "decoder_loss_weights": np.zeros((b, rows.target_length), np.float32)}
  for key in ("image_ids", "ys", "xs", "ts"):
    out[key] = np.zeros((b, rows.vit_length), np.int32)
  for key in ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions"):
    out[key] = np.zeros((b, rows.input_length), np.int32)
  out["encoder_visual_index"] = np.full((b, rows.input_length), -1, np.int32)
  for key in ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
              "decoder_positions"):
    out[key] = np.zeros((b, rows.target_length), np.int32)
  out["example_mask"] = np.zeros((b, rows.examples_per_row), np.int32)
  out["task_ids"] = np.zeros((b, rows.examples_per_row), np.int32)
  for r, examples in enumerate(row_examples):
    space = _RowSpace()
    for example in examples:
      check_example(example, rows)
      if not space.fits(example, rows):
        raise DataError(f"packed row {r}: {example.describe()} does not fit after "
                        f"{len(space.examples)} examples ({space.encoder}/{rows.input_length} "
                        f"encoder, {space.decoder}/{rows.target_length} decoder, "
                        f"{space.vit}/{rows.vit_length} ViT tokens)")
      _write_example(out, r, space, example, rows, separator_id, bos_id)
      space.add(example)
  return out


def _write_example(out, r, space: _RowSpace, example: PackedExample, rows: PackedRows,
                   separator_id, bos_id) -> None:
  segment = len(space.examples) + 1
  # ViT: the example's segments back to back from the row's first free token.
  vit_start, slot = space.vit, space.vit_slots
  start = vit_start
  for t, image in enumerate(example.images):
    if not example.clip or t == 0:
      slot += 1
      out["grid_sizes"][r, slot - 1] = image.grid
    end = start + image.num_tokens
    out["patches"][r, start:end] = image.patches
    out["ys"][r, start:end], out["xs"][r, start:end] = image.ys, image.xs
    out["ts"][r, start:end] = t
    out["image_ids"][r, start:end] = slot
    start = end
  # Encoder: the interleaved layout; visual element v is the row's ViT token vit_start + v.
  layout = encoder_layout(example, separator_id)
  visual = layout < example.num_visual
  e0, e1 = space.encoder, space.encoder + len(layout)
  out["encoder_visual_index"][r, e0:e1] = np.where(visual, vit_start + layout, -1)
  text = np.asarray(example.inputs, np.int32)
  out["encoder_input_tokens"][r, e0:e1] = np.where(
      visual, 0, text[np.clip(layout - example.num_visual, 0, len(text) - 1)])
  out["encoder_segment_ids"][r, e0:e1] = segment
  out["encoder_positions"][r, e0:e1] = np.arange(len(layout))
  # Decoder: the targets, shifted right within the segment.
  targets = np.asarray(example.targets, np.int32)
  d0, d1 = space.decoder, space.decoder + len(targets)
  out["decoder_target_tokens"][r, d0:d1] = targets
  out["decoder_input_tokens"][r, d0:d1] = base.shift_right(targets, bos_id)
  out["decoder_loss_weights"][r, d0:d1] = 1.0
  out["decoder_segment_ids"][r, d0:d1] = segment
  out["decoder_positions"][r, d0:d1] = np.arange(len(targets))
  out["example_mask"][r, segment - 1] = 1
  out["task_ids"][r, segment - 1] = example.task_id


@dataclasses.dataclass
class PackedStats:
  """What a packed stream did: examples placed, carried over, dropped (and why), and the share
  of each sequence's capacity holding real tokens."""
  steps: int = 0
  examples: int = 0
  carried_over: int = 0
  dropped: int = 0
  dropped_examples: List[str] = dataclasses.field(default_factory=list)
  tokens: Dict[str, int] = dataclasses.field(
      default_factory=lambda: {"vit": 0, "encoder": 0, "decoder": 0})
  capacity: Dict[str, int] = dataclasses.field(
      default_factory=lambda: {"vit": 0, "encoder": 0, "decoder": 0})

  def non_pad_fraction(self, sequence: str) -> float:
    return self.tokens[sequence] / self.capacity[sequence] if self.capacity[sequence] else 0.0

  def record_step(self, spaces: Sequence[_RowSpace], rows: PackedRows) -> None:
    self.steps += 1
    self.examples += sum(len(s.examples) for s in spaces)
    for name, used, size in (("vit", "vit", rows.vit_length),
                             ("encoder", "encoder", rows.input_length),
                             ("decoder", "decoder", rows.target_length)):
      self.tokens[name] += sum(getattr(s, used) for s in spaces)
      self.capacity[name] += size * len(spaces)

  def summary(self) -> str:
    fills = ", ".join(f"{name} {100 * self.non_pad_fraction(name):.1f}%"
                      for name in ("vit", "encoder", "decoder"))
    text = (f"{self.steps} packed steps: {self.examples} examples, non-pad tokens {fills}; "
            f"{self.carried_over} carried over to the next step, {self.dropped} dropped")
    if self.dropped_examples:
      text += f" (first: {self.dropped_examples[0]})"
    return text


class ExamplePacker:
  """Packs the examples scheduled for each training step into ``num_rows`` rows.

  Step ``j`` packs its own window first (first fit, longest first, into empty rows); what does
  not fit is carried into step ``j + 1``, which packs it into the room its own window leaves; an
  example that does not fit there either is dropped (counted in :class:`PackedStats`, the first
  one logged with its record id). So step ``j`` is a function of windows ``j - 1`` and ``j``,
  and a stream resumed at step ``k`` rebuilds the carry-over of step ``k - 1`` with
  :meth:`leftover`.
  """

  def __init__(self, rows: PackedRows, num_rows: int, stats: Optional[PackedStats] = None):
    self.rows, self.num_rows = rows, num_rows
    self.stats = stats if stats is not None else PackedStats()
    self._logged_drop = False

  def _fit(self, examples, spaces):
    for example in examples:
      check_example(example, self.rows)
    return first_fit_decreasing(examples, spaces, self.rows)

  def leftover(self, window: Sequence[PackedExample]) -> List[PackedExample]:
    """The examples of ``window`` that its own step could not place."""
    return self._fit(window, [_RowSpace() for _ in range(self.num_rows)])

  def step(self, window: Sequence[PackedExample], carried: Sequence[PackedExample]
           ) -> Tuple[List[List[PackedExample]], List[PackedExample]]:
    """``(rows, carry)``: this step's rows (examples per row) and what moves to the next step."""
    spaces = [_RowSpace() for _ in range(self.num_rows)]
    carry = self._fit(window, spaces)
    for example in self._fit(carried, spaces):
      self._drop(example)
    self.stats.record_step(spaces, self.rows)
    self.stats.carried_over += len(carry)
    return [space.examples for space in spaces], carry

  def _drop(self, example: PackedExample) -> None:
    self.stats.dropped += 1
    reason = (f"{example.describe()} ({example.encoder_length} encoder tokens) fitted neither "
              "its own step nor the next one; schedule fewer examples per step "
              "(packed_batches examples_per_step)")
    if len(self.stats.dropped_examples) < 10:
      self.stats.dropped_examples.append(reason)
    if not self._logged_drop:
      logger.warning("packing dropped an example: %s (dropped examples are counted in "
                     "PackedStats)", reason)
      self._logged_drop = True
