"""The packed PaLI-X batch: several examples per row, images at their own size, one schema.

A packed batch has ``B`` rows. Row ``r`` holds up to ``S`` examples back to back, each a
*segment* ``s = 1..S`` of the row (T5X's packing: segment ids and per-segment positions), and
the patches of those examples' images in a ViT row of its own (NaViT's Patch n' Pack): each image
is patchified at its own resolution and aspect ratio, and its visual tokens are gathered back
into the encoder row, before the prompt of its example (interleaved with the text segments of a
few-shot prompt, ``palix.models.palix_model.interleaved_order``). Every row is independent of
the others (the gather stays inside the row), so data parallelism shards rows as usual.

====================  =======  =================  =================================================
key                   dtype    shape              meaning
====================  =======  =================  =================================================
``patches``           float32  [B, Lv, p*p*3]     patch pixels in [-1, 1] (``patchify`` order)
``image_ids``         int32    [B, Lv]            ViT segment: 0 = padding, k = ViT slot k-1 (one
                                                  image, or every frame of one video clip)
``ys``, ``xs``        int32    [B, Lv]            patch coordinates in the token's image
``ts``                int32    [B, Lv]            index of the token's image in its example (the
                                                  frame number of a video)
``grid_sizes``        int32    [B, K, 2]          patch grid (gh, gw) of each ViT slot; 0: empty
``encoder_input_tokens``  int32  [B, Le]          prompt tokens at text positions, 0 elsewhere
``encoder_visual_index``  int32  [B, Le]          for a visual position, the index of its token in
                                                  the row's ViT sequence; -1 elsewhere
``encoder_segment_ids``   int32  [B, Le]          example (segment) of each token, 0 = padding
``encoder_positions``     int32  [B, Le]          position within the segment (0, 1, ...)
``decoder_target_tokens``, ``decoder_input_tokens``, ``decoder_loss_weights``  [B, Ld]
                                                  as unpacked, each segment shifted on its own
``decoder_segment_ids``, ``decoder_positions``    [B, Ld]  as for the encoder
``example_mask``      int32    [B, S]             1 where segment s+1 of the row holds an example
``task_ids``          int32    [B, S]             (training) the task of each example, for
                                                  per-task metrics (``palix.training.train_step``)
====================  =======  =================  =================================================

Per-example outputs of a packed batch (scores, decoded tokens) are ``[B, S, ...]``: example
``(r, s)`` is segment ``s + 1`` of row ``r``. ``palix.tasks.packed_batches`` builds these
batches for training.
"""

from typing import Mapping

import numpy as np

from palix.models.base import FeatureSpec

PACKED_FEATURES = {
    "patches": FeatureSpec(np.float32, ("vit_length", "patch_pixels"), "patch pixels"),
    "image_ids": FeatureSpec(np.int32, ("vit_length",), "ViT segment, 0 = padding"),
    "ys": FeatureSpec(np.int32, ("vit_length",), "patch row"),
    "xs": FeatureSpec(np.int32, ("vit_length",), "patch column"),
    "ts": FeatureSpec(np.int32, ("vit_length",), "image (frame) index in the example"),
    "grid_sizes": FeatureSpec(np.int32, ("vit_slots", 2), "patch grid of each ViT slot"),
    "encoder_input_tokens": FeatureSpec(np.int32, ("input_length",), "prompt tokens"),
    "encoder_visual_index": FeatureSpec(np.int32, ("input_length",), "ViT token or -1"),
    "encoder_segment_ids": FeatureSpec(np.int32, ("input_length",), "example, 0 = padding"),
    "encoder_positions": FeatureSpec(np.int32, ("input_length",), "position in the example"),
    "decoder_input_tokens": FeatureSpec(np.int32, ("target_length",), "shifted targets"),
    "decoder_target_tokens": FeatureSpec(np.int32, ("target_length",), "targets"),
    "decoder_loss_weights": FeatureSpec(np.float32, ("target_length",), "loss weights"),
    "decoder_segment_ids": FeatureSpec(np.int32, ("target_length",), "example, 0 = padding"),
    "decoder_positions": FeatureSpec(np.int32, ("target_length",), "position in the example"),
    "example_mask": FeatureSpec(np.int32, ("examples_per_row",), "1 for a real example"),
}
VISION_KEYS = ("patches", "image_ids", "ys", "xs", "ts", "grid_sizes")
ENCODER_KEYS = ("encoder_input_tokens", "encoder_visual_index", "encoder_segment_ids",
                "encoder_positions")
# What encoding and decoding need; training adds the decoder keys.
INPUT_KEYS = VISION_KEYS + ENCODER_KEYS + ("example_mask",)
TARGET_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
               "decoder_segment_ids", "decoder_positions")


def is_packed(batch: Mapping) -> bool:
  """Whether ``batch`` is a packed batch (it has encoder segment ids) rather than one example
  per row (``palix.models.base.MODEL_FEATURES``)."""
  return "encoder_segment_ids" in batch


def validate(batch: Mapping, keys, *, patch_pixels: int) -> None:
  """Raises a ValueError naming the key and the expected shape when ``batch`` is not a packed
  batch of consistent shapes (checked on static shapes: free under ``jit``)."""
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f"packed batch is missing {', '.join(repr(k) for k in missing)}; it has "
                   f"{sorted(batch)}; expected keys {list(keys)}")
  sizes = {"patch_pixels": patch_pixels}
  rows = {}
  for key in keys:
    spec = PACKED_FEATURES[key]
    shape = tuple(np.shape(batch[key]))
    if len(shape) != 1 + len(spec.shape):
      raise ValueError(f"packed batch[{key!r}] has shape {shape}; expected {spec.describe()}")
    rows[key] = shape[0]
    for name, size in zip(spec.shape, shape[1:]):
      if isinstance(name, int):
        if size != name:
          raise ValueError(f"packed batch[{key!r}] has shape {shape}; expected {spec.describe()}")
        continue
      if sizes.setdefault(name, size) != size:
        raise ValueError(f"packed batch[{key!r}] has shape {shape}: its {name} is {size}, but "
                         f"other keys have {sizes[name]} (expected {spec.describe()})")
  if len(set(rows.values())) > 1:
    raise ValueError(f"packed batch keys disagree on the number of rows: {rows}")
