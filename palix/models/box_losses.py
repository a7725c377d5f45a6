"""OWL-ViT / DETR detection losses: sigmoid focal loss on classes, L1 and GIoU on matched boxes.

Given the matching (``palix.models.matching``: a token for every real instance), per example:

* ``focal``: sigmoid focal loss (Lin et al. 2017) over every (token, real query) pair; the target
  is 1 where the token is matched to an instance labelled with that query, else 0;
* ``l1``: ``sum |box - gt|`` over the four cxcywh coordinates of the matched pairs;
* ``giou``: ``1 - GIoU`` of the matched pairs;
* ``objectness``: sigmoid focal loss of the objectness logit, target 1 for matched tokens.

Each is summed over the example and divided by its number of instances (at least 1): scenic's
``per_example`` normalisation, so an image with many objects does not outweigh one with few.
The batch loss is the mean over examples of ``sum_k weight_k * loss_k``.
"""

import dataclasses
from typing import Dict

import gin
import jax
import jax.numpy as jnp

from palix.models import box_ops


def sigmoid_focal_loss(logits, targets, alpha: float = 0.3, gamma: float = 2.0):
  """Elementwise focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (``alpha < 0``: no weighting)."""
  logits = logits.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = ce * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
  return loss


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DetectionLossConfig:
  """Loss weights and focal parameters (scenic's OWL-ViT recipe: all weights 1, gamma 2, alpha 0.3).

  The matching uses the same weights (``palix.models.matching.cost_matrix``).
  """
  class_weight: float = 1.0
  l1_weight: float = 1.0
  giou_weight: float = 1.0
  objectness_weight: float = 1.0
  alpha: float = 0.3
  gamma: float = 2.0

  @property
  def cost_kwargs(self):
    return dict(class_weight=self.class_weight, l1_weight=self.l1_weight,
                giou_weight=self.giou_weight, alpha=self.alpha, gamma=self.gamma)


def match_targets(matched, gt_labels, num_tokens: int, num_queries: int):
  """``[B, P, Q]`` 0/1 class targets from the matching (``matched [B, M]``, ``-1``: none)."""
  real = (matched >= 0) & (gt_labels >= 0)
  tokens = jax.nn.one_hot(jnp.where(real, matched, -1), num_tokens)  # -1 -> all zeros
  queries = jax.nn.one_hot(jnp.where(real, gt_labels, -1), num_queries)
  return jnp.minimum(jnp.einsum("bmp,bmq->bpq", tokens, queries), 1.0)


def detection_losses(outputs, matched, gt_boxes, gt_labels, query_mask,
                     config: DetectionLossConfig = DetectionLossConfig()) -> Dict[str, jax.Array]:
  """Per-example losses ``{focal, l1, giou, objectness}`` (each ``[B]``) and ``num_instances``.

  Args:
    outputs: ``logits [B, P, Q]``, ``pred_boxes [B, P, 4]`` (cxcywh) and, optionally,
      ``objectness [B, P]`` logits.
    matched: ``[B, M]`` token matched to each instance (``-1``: padded or unmatched).
    gt_boxes: ``[B, M, 4]`` cxcywh; gt_labels: ``[B, M]`` query index, ``-1`` padding.
    query_mask: ``[B, Q]`` 1 for real queries; padded queries add nothing to the loss.
  """
  logits, pred_boxes = outputs["logits"], outputs["pred_boxes"]
  num_tokens, num_queries = logits.shape[1], logits.shape[2]
  targets = match_targets(matched, gt_labels, num_tokens, num_queries)
  real_query = query_mask[:, None, :].astype(jnp.float32)
  focal = jnp.sum(sigmoid_focal_loss(logits, targets, config.alpha, config.gamma) * real_query,
                  axis=(1, 2))
  pair = ((matched >= 0) & (gt_labels >= 0)).astype(jnp.float32)  # [B, M]
  matched_boxes = jnp.take_along_axis(pred_boxes, jnp.maximum(matched, 0)[..., None], axis=1)
  l1 = jnp.sum(jnp.abs(matched_boxes - gt_boxes).sum(-1) * pair, axis=1)
  giou = box_ops.generalized_iou(box_ops.cxcywh_to_yxyx(matched_boxes),
                                 box_ops.cxcywh_to_yxyx(gt_boxes))
  giou = jnp.sum((1 - giou) * pair, axis=1)
  num_instances = jnp.sum((gt_labels >= 0).astype(jnp.float32), axis=1)
  norm = jnp.maximum(num_instances, 1.0)
  losses = {"focal": focal / norm, "l1": l1 / norm, "giou": giou / norm}
  if outputs.get("objectness") is not None:
    is_object = jnp.max(targets, axis=2)  # [B, P]
    losses["objectness"] = jnp.sum(
        sigmoid_focal_loss(outputs["objectness"], is_object, config.alpha, config.gamma),
        axis=1) / norm
  losses["num_instances"] = num_instances
  return losses


def total_loss(losses: Dict[str, jax.Array], config: DetectionLossConfig):
  """Mean over examples of the weighted sum of the per-example losses."""
  weights = {"focal": config.class_weight, "l1": config.l1_weight, "giou": config.giou_weight,
             "objectness": config.objectness_weight}
  return jnp.mean(sum(weights[k] * v for k, v in losses.items() if k in weights))
