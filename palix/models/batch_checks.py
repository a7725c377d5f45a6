"""Batch validation with errors that name the key and the expected shape.

Expected ranks and shapes come from the batch schema (``palix.models.base.MODEL_FEATURES``).
Checks run on static shapes, so they cost nothing under ``jit``.
"""

from typing import Mapping, Optional, Sequence

import numpy as np

from palix.models.base import MODEL_FEATURES, TARGET_KEYS


def validate_batch(batch: Mapping, keys: Sequence[str], *,
                   max_input_len: Optional[int] = None) -> None:
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f"batch is missing {', '.join(repr(k) for k in missing)}; it has "
                   f"{sorted(batch)}; expected keys {list(keys)}")
  shapes = {k: tuple(np.shape(batch[k])) for k in keys}
  for key, shape in shapes.items():
    spec = MODEL_FEATURES.get(key)
    if spec is not None and len(shape) != 1 + len(spec.shape):
      raise ValueError(f"batch[{key!r}] has shape {shape}; expected {spec.describe()}")
  batch_sizes = {k: s[0] for k, s in shapes.items()}
  if len(set(batch_sizes.values())) > 1:
    raise ValueError(f"batch keys disagree on the batch size: {batch_sizes}")
  if "images" in shapes:
    if shapes["images"][-1] != 3:
      raise ValueError(f"batch['images'] has shape {shapes['images']}; expected "
                       f"{MODEL_FEATURES['images'].describe()} (3 colour channels last)")
    if "image_mask" in shapes and shapes["image_mask"] != shapes["images"][:2]:
      raise ValueError(f"batch['image_mask'] has shape {shapes['image_mask']}; expected "
                       f"{shapes['images'][:2]} ([batch, num_images] of batch['images'])")
  targets = [k for k in TARGET_KEYS if k in shapes]
  if len({shapes[k] for k in targets}) > 1:
    raise ValueError("decoder keys disagree on their shape: "
                     + ", ".join(f"{k}={shapes[k]}" for k in targets))
  if (max_input_len is not None and "encoder_input_tokens" in shapes
      and shapes["encoder_input_tokens"][1] > max_input_len):
    raise ValueError(f"batch['encoder_input_tokens'] has length "
                     f"{shapes['encoder_input_tokens'][1]}, longer than the configured "
                     f"max_input_len={max_input_len} (TASK_FEATURE_LENGTHS['inputs'])")
