"""Hungarian matching of predicted boxes (one per image token) to ground-truth instances.

The matching cost of token ``p`` and instance ``m`` (DETR / OWL-ViT) is::

  class_weight * focal_cost(logit[p, label[m]]) + l1_weight * |box[p] - gt[m]|_1
      - giou_weight * GIoU(box[p], gt[m])

and the assignment minimising the total cost is found by
``scipy.optimize.linear_sum_assignment`` (exact, O(n^3)).

**Why on the host, through ``jax.pure_callback``.** The assignment is discrete and has no
gradient, so the loss only needs its result: the cost matrix is computed in JAX (under
``stop_gradient``), the indices come back from scipy, and the loss stays one jitted function of
the parameters. A jittable Hungarian (scenic's ``hungarian_cover_tpu``) would avoid the
device-to-host round trip, which matters on accelerators; on CPU the host *is* the device, the
matrices are small (tokens x instances, e.g. 64 x 16) and scipy's C implementation takes
microseconds, so the exact library routine wins on simplicity. Padded instances (``label < 0``)
are left out of the problem, so they never take a token.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from palix.models import box_ops


def focal_class_cost(logits, alpha: float = 0.3, gamma: float = 2.0):
  """Deformable-DETR's focal matching cost of predicting each class: ``pos - neg`` cost."""
  prob = jax.nn.sigmoid(logits)
  neg = (1 - alpha) * prob ** gamma * -jnp.log(1 - prob + 1e-8)
  pos = alpha * (1 - prob) ** gamma * -jnp.log(prob + 1e-8)
  return pos - neg


def cost_matrix(logits, pred_boxes, gt_boxes, gt_labels, *, class_weight: float = 1.0,
                l1_weight: float = 1.0, giou_weight: float = 1.0, alpha: float = 0.3,
                gamma: float = 2.0):
  """``[B, P, M]`` matching costs.

  Args:
    logits: ``[B, P, Q]`` class logits of every token for every query.
    pred_boxes: ``[B, P, 4]`` cxcywh; gt_boxes: ``[B, M, 4]`` cxcywh.
    gt_labels: ``[B, M]`` int query index of each instance, ``-1`` for padding (its column is
      filled with the class cost of query 0; the solver ignores padded columns).
  """
  class_cost = focal_class_cost(logits, alpha, gamma)  # [B, P, Q]
  labels = jnp.maximum(gt_labels, 0)
  class_cost = jnp.take_along_axis(class_cost, labels[:, None, :], axis=2)  # [B, P, M]
  l1 = jnp.sum(jnp.abs(pred_boxes[:, :, None, :] - gt_boxes[:, None, :, :]), axis=-1)
  giou = box_ops.pairwise_generalized_iou(box_ops.cxcywh_to_yxyx(pred_boxes),
                                          box_ops.cxcywh_to_yxyx(gt_boxes))
  return class_weight * class_cost + l1_weight * l1 - giou_weight * giou


def hungarian_numpy(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Optimal assignment per example: ``[B, M]`` token index of each instance, ``-1`` if padded.

  ``cost`` is ``[B, P, M]``, ``valid`` ``[B, M]`` bool. With fewer tokens than instances, the
  instances left without a token are ``-1`` too (the solver picks which ones).
  """
  # Non-finite costs (a diverged model) still get an assignment; the trainer then stops on the
  # non-finite loss and names the step, instead of failing inside the host callback.
  cost = np.nan_to_num(np.asarray(cost, np.float64), nan=1e9, posinf=1e9, neginf=-1e9)
  valid = np.asarray(valid, bool)
  out = np.full(valid.shape, -1, np.int32)
  for b in range(cost.shape[0]):
    columns = np.flatnonzero(valid[b])
    if columns.size == 0:
      continue
    rows, cols = optimize.linear_sum_assignment(cost[b][:, columns])
    out[b, columns[cols]] = rows
  return out


def hungarian(cost, valid):
  """``hungarian_numpy`` as a jittable JAX op (host callback; no gradient flows through it)."""
  result = jax.ShapeDtypeStruct(valid.shape, jnp.int32)
  return jax.pure_callback(hungarian_numpy, result, jax.lax.stop_gradient(cost), valid,
                           vmap_method="sequential")


def match(logits, pred_boxes, gt_boxes, gt_labels, **cost_kwargs):
  """Token index matched to each ground-truth instance, ``[B, M]`` (``-1``: padded/unmatched)."""
  cost = cost_matrix(jax.lax.stop_gradient(logits), jax.lax.stop_gradient(pred_boxes), gt_boxes,
                     gt_labels, **cost_kwargs)
  return hungarian(cost, gt_labels >= 0)
