"""Batch validation with errors that name the key and the expected shape.

Checks run on static shapes, so they cost nothing under ``jit``.
"""

from typing import Mapping, Optional, Sequence

import numpy as np

_RANKS = {
    "images": ("[batch, num_images, height, width, 3]", 5),
    "image_mask": ("[batch, num_images]", 2),
    "encoder_input_tokens": ("[batch, input_length]", 2),
    "decoder_input_tokens": ("[batch, target_length]", 2),
    "decoder_target_tokens": ("[batch, target_length]", 2),
    "decoder_loss_weights": ("[batch, target_length]", 2),
}


def validate_batch(batch: Mapping, keys: Sequence[str], *,
                   max_input_len: Optional[int] = None) -> None:
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f"batch is missing {', '.join(repr(k) for k in missing)}; it has "
                   f"{sorted(batch)}; expected keys {list(keys)}")
  shapes = {k: tuple(np.shape(batch[k])) for k in keys}
  for key, shape in shapes.items():
    spec, rank = _RANKS.get(key, (None, None))
    if rank is not None and len(shape) != rank:
      raise ValueError(f"batch[{key!r}] has shape {shape}; expected {spec}")
  batch_sizes = {k: s[0] for k, s in shapes.items()}
  if len(set(batch_sizes.values())) > 1:
    raise ValueError(f"batch keys disagree on the batch size: {batch_sizes}")
  if "images" in shapes:
    if shapes["images"][-1] != 3:
      raise ValueError(f"batch['images'] has shape {shapes['images']}; expected "
                       f"{_RANKS['images'][0]} (3 colour channels last)")
    if "image_mask" in shapes and shapes["image_mask"] != shapes["images"][:2]:
      raise ValueError(f"batch['image_mask'] has shape {shapes['image_mask']}; expected "
                       f"{shapes['images'][:2]} ([batch, num_images] of batch['images'])")
  targets = [k for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
             if k in shapes]
  if len({shapes[k] for k in targets}) > 1:
    raise ValueError("decoder keys disagree on their shape: "
                     + ", ".join(f"{k}={shapes[k]}" for k in targets))
  if (max_input_len is not None and "encoder_input_tokens" in shapes
      and shapes["encoder_input_tokens"][1] > max_input_len):
    raise ValueError(f"batch['encoder_input_tokens'] has length "
                     f"{shapes['encoder_input_tokens'][1]}, longer than the configured "
                     f"max_input_len={max_input_len} (TASK_FEATURE_LENGTHS['inputs'])")
