"""Box arithmetic for the OWL detector: format conversion, IoU and generalised IoU (jittable).

Two box formats, both normalised to the image (``[0, 1]``):

* ``cxcywh``: ``(centre x, centre y, width, height)``, what the box head predicts (OWL-ViT);
* ``yxyx``: ``(ymin, xmin, ymax, xmax)``, palix's convention everywhere else (location tokens,
  ``palix.eval.metrics.detection``, the report).

GIoU (Rezatofighi et al. 2019) is ``IoU - (|C| - |A u B|) / |C|`` with ``C`` the smallest box that
encloses both; it lies in ``(-1, 1]`` and, unlike IoU, still has a gradient when boxes do not overlap.
"""

import jax.numpy as jnp

_EPS = 1e-9


def cxcywh_to_yxyx(boxes):
  cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def yxyx_to_cxcywh(boxes):
  ymin, xmin, ymax, xmax = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([(xmin + xmax) / 2, (ymin + ymax) / 2, xmax - xmin, ymax - ymin], axis=-1)


def area(boxes_yxyx):
  ymin, xmin, ymax, xmax = jnp.moveaxis(boxes_yxyx, -1, 0)
  return jnp.maximum(ymax - ymin, 0.0) * jnp.maximum(xmax - xmin, 0.0)


def _union_and_enclosure(a, b):
  """Intersection, union and enclosing-box areas of ``a [..., 4]`` and ``b [..., 4]`` (yxyx)."""
  top_left = jnp.maximum(a[..., :2], b[..., :2])
  bottom_right = jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.maximum(bottom_right - top_left, 0.0), axis=-1)
  union = area(a) + area(b) - inter
  enclosing = jnp.prod(jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2]),
                       axis=-1)
  return inter, union, enclosing


def iou(a, b):
  """Elementwise IoU of broadcastable yxyx boxes ``a [..., 4]`` and ``b [..., 4]``."""
  inter, union, _ = _union_and_enclosure(a, b)
  return inter / (union + _EPS)


def generalized_iou(a, b):
  """Elementwise GIoU of broadcastable yxyx boxes; degenerate (zero-area) boxes are allowed."""
  inter, union, enclosing = _union_and_enclosure(a, b)
  return inter / (union + _EPS) - (enclosing - union) / (enclosing + _EPS)


def pairwise_generalized_iou(a, b):
  """GIoU of every box in ``a [..., N, 4]`` with every box in ``b [..., M, 4]``: ``[..., N, M]``."""
  return generalized_iou(a[..., :, None, :], b[..., None, :, :])
