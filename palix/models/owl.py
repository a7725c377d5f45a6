"""OWLv2-style open-vocabulary detector on palix's ViT (Minderer et al. 2023; papers.md §2.4).

Every image token predicts a box (``box_head`` + the patch-grid bias), a class embedding that is
compared with the embeddings of free-text queries (``class_head``), and an objectness score
(``objectness_head``, on ``stop_gradient`` features, so it does not shape the trunk). Training
matches tokens to ground-truth instances with the Hungarian algorithm (``palix.models.matching``)
and uses focal, L1 and GIoU losses (``palix.models.box_losses``).

Two ways to spend less compute on a token, both training-time options of ``OwlModel``:

* **token dropping** (``keep_fraction``): only the highest-pixel-variance patches enter the
  Transformer (``palix.layers.token_dropping``); positions are added before dropping, so every
  kept token knows where it is, and its box bias is that of its own patch;
* **instance selection** (``objectness_top_k``): the class and box heads, the matching and the
  losses see only the ``k`` tokens with the highest objectness. The heads are per-token, so a
  selected token's outputs are exactly what it would get without selection.

The module shares parameter names with ``palix.models.image_text.ImageText`` (``vit``, ``text``,
``text_projection``), so a detector starts from an image-text checkpoint with
``InitialCheckpoint`` (``gin/experiments/owl_detector.gin``).

Batch (``palix.tasks.box_batches``):

=================  =======  ===============  ==================================================
key                dtype    shape            meaning
=================  =======  ===============  ==================================================
``images``         float32  [B, H, W, 3]     pixels in [-1, 1] (``[B, 1, H, W, 3]`` accepted)
``query_tokens``   int32    [B, Q, L]        text queries (ids + EOS); an all-zero row = padding
``boxes``          float32  [B, M, 4]        instance boxes, normalised cxcywh
``box_labels``     int32    [B, M]           query index of each instance; -1 = padding
=================  =======  ===============  ==================================================
"""

import dataclasses
import functools
import math
from typing import Any, Dict, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from palix.layers import box_heads
from palix.layers import token_dropping
from palix.layers.norms import LayerNorm
from palix.models import base
from palix.models import box_losses
from palix.models import box_ops
from palix.models import matching
from palix.models.image_text import joint_projection, single_images
from palix.models.vit import NoPool, ViT, ViTConfig

BATCH_KEYS = ("images", "query_tokens", "boxes", "box_labels")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OwlConfig:
  """Attributes:
    vit: the image tower (``class_token`` must be off: every token is a box).
    text: the text tower config (``palix.models.text_tower``), as in the image-text model.
    embed_dim: joint image-text width (the image-text model's).
    merge_pooled: OWL-ViT's ``mul-ln`` merge, ``LayerNorm(token * pooled)`` with the ViT's pooled
      output (needs ``pool`` other than ``NoPool``); off: the tokens as the ViT returns them.
    box_head_layers: layers of the box MLP.
    class_prior: the score of a (token, query) pair at cosine 0 when training starts (the
      focal-loss prior, 0.01).
    class_logit_scale: the class head's initial logit scale (``ClassPredictor.scale_init``).
  """
  vit: ViTConfig = gin.REQUIRED
  text: Any = gin.REQUIRED
  embed_dim: int = 128
  merge_pooled: bool = False
  box_head_layers: int = 3
  class_prior: float = 0.01
  class_logit_scale: float = 1.0

  def resolved_vit(self) -> ViTConfig:
    vit = self.vit.resolved()
    if vit.class_token:
      raise ValueError("OwlConfig.vit.class_token must be False: every ViT token predicts a box")
    if self.merge_pooled and vit.pool is NoPool:
      raise ValueError("OwlConfig.merge_pooled needs ViTConfig.pool = vit.GlobalAveragePool or "
                       "vit.MAPHead (NoPool has no pooled embedding)")
    return vit


class OwlDetector(nn.Module):
  """Images + query tokens -> per-token boxes, class logits and objectness. See the module doc."""
  config: OwlConfig

  def setup(self):
    c = self.config
    self.vit_config = c.resolved_vit()
    self.vit = ViT(self.vit_config, name="vit")
    self.text = c.text.make("text")
    self.text_projection = joint_projection(c.embed_dim, "text_projection")
    if c.merge_pooled:
      self.merge_norm = LayerNorm(epsilon=self.vit_config.layer_norm_eps, name="merge_norm")
    # logit = (cos + shift) * scale starts at logit(prior) for cos = 0.
    prior = math.log(c.class_prior / (1 - c.class_prior))
    self.class_head = box_heads.ClassPredictor(
        c.embed_dim, shift_init=prior / c.class_logit_scale, scale_init=c.class_logit_scale,
        name="class_head")
    self.box_head = box_heads.PredictorMLP(4, c.box_head_layers, name="box_head")
    self.objectness_head = box_heads.PredictorMLP(1, 3, name="objectness_head")

  def grid(self, images):
    p = self.vit_config.patch_size
    return images.shape[1] // p, images.shape[2] // p

  def image_tokens(self, images, keep: Optional[int] = None, train: bool = False):
    """``(tokens [B, K, D], token_index [B, K])``: all patches, or the ``keep`` with the highest
    pixel variance (their indices into the row-major patch grid)."""
    vit = self.vit
    b = images.shape[0]
    if keep is None:
      pooled, out = vit(images, train=train)
      tokens = out["encoded"]
      index = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape[:2])
    else:
      # ViT.__call__ on a subset of patches: positions are added before the subset is taken.
      x, (gh, gw) = vit.embedding(images.astype(self.vit_config.compute_dtype))
      ys, xs = jnp.divmod(jnp.arange(gh * gw), gw)
      x = x + vit.posemb(jnp.broadcast_to(ys, (b, gh * gw)), jnp.broadcast_to(xs, (b, gh * gw)),
                         (gh, gw)).astype(x.dtype)
      index = token_dropping.keep_high_variance(images, self.vit_config.patch_size, keep)
      x = vit.dropout(token_dropping.gather_tokens(x, index), deterministic=not train)
      real = jnp.ones(x.shape[:2], jnp.int32)
      tokens, _ = vit.encoder(x, real, deterministic=not train)
      pooled = vit.head(tokens, real > 0, deterministic=not train)
    if self.config.merge_pooled:
      tokens = self.merge_norm(tokens * pooled[:, None, :])
    return tokens, index

  def embed_queries(self, query_tokens, train: bool = False):
    """``[B, Q, L]`` query tokens -> ``[B, Q, E]`` embeddings (not normalised)."""
    b, q, length = query_tokens.shape
    pooled = self.text(query_tokens.reshape(b * q, length), deterministic=not train)
    return self.text_projection(pooled).reshape(b, q, -1)

  def objectness(self, tokens):
    return self.objectness_head(jax.lax.stop_gradient(tokens))[..., 0]

  def heads(self, tokens, token_index, grid, query_embeddings, query_mask):
    """Boxes ``[B, K, 4]`` (cxcywh) and logits ``[B, K, Q]`` of the given tokens."""
    bias = box_heads.box_bias(*grid)[token_index]
    pred_boxes = jax.nn.sigmoid(self.box_head(tokens).astype(jnp.float32) + bias)
    logits = self.class_head(tokens, query_embeddings, query_mask)
    return pred_boxes, logits

  def __call__(self, images, query_tokens, *, keep: Optional[int] = None,
               top_k: Optional[int] = None, train: bool = False) -> Dict[str, jax.Array]:
    """``{pred_boxes [B, K, 4], logits [B, K, Q], objectness [B, K], token_index [B, K]}``.

    ``keep``: token dropping (patches entering the ViT); ``top_k``: instance selection (tokens
    reaching the heads, by objectness).
    """
    tokens, index = self.image_tokens(images, keep, train)
    objectness = self.objectness(tokens)
    if top_k is not None:
      if not 1 <= top_k <= tokens.shape[1]:
        raise ValueError(f"objectness_top_k {top_k} must be in [1, {tokens.shape[1]}] (tokens)")
      _, chosen = jax.lax.top_k(objectness, top_k)
      chosen = jnp.sort(chosen, axis=-1)
      tokens = token_dropping.gather_tokens(tokens, chosen)
      index = jnp.take_along_axis(index, chosen, axis=1)
      objectness = jnp.take_along_axis(objectness, chosen, axis=1)
    query_mask = (query_tokens[..., 0] > 0).astype(jnp.int32)
    pred_boxes, logits = self.heads(tokens, index, self.grid(images),
                                    self.embed_queries(query_tokens, train), query_mask)
    return {"pred_boxes": pred_boxes, "logits": logits, "objectness": objectness,
            "token_index": index}


def top_detections(pred_boxes, logits, num: int):
  """The ``num`` best (token, query) pairs of every image by score ``sigmoid(logit)``.

  Returns ``boxes [B, num, 4]`` (yxyx), ``scores [B, num]``, ``labels [B, num]`` (query index)
  and ``tokens [B, num]``. Padded queries have logit -1e6, so they score 0.
  """
  b, p, q = logits.shape
  num = min(num, p * q)
  scores, flat = jax.lax.top_k(jax.nn.sigmoid(logits.reshape(b, p * q)), num)
  tokens, labels = jnp.divmod(flat, q)
  boxes = jnp.take_along_axis(box_ops.cxcywh_to_yxyx(pred_boxes), tokens[..., None], axis=1)
  return {"boxes": boxes, "scores": scores, "labels": labels, "tokens": tokens}


@gin.configurable
class OwlModel(base.BaseModel):
  """The model contract for ``OwlDetector``.

  Args:
    config: the module config.
    image_size: input side (``example_inputs`` and initialisation).
    max_queries, max_query_len: the query geometry of ``example_inputs``.
    loss: loss weights and focal parameters (the matching uses the same).
    keep_fraction: training-time token dropping: the fraction of patches that enter the ViT
      (None or 1: all). Evaluation and inference always see every patch.
    objectness_top_k: training-time instance selection (None: every token reaches the heads).
    num_detections: boxes per image returned by ``predict_batch_with_aux``.

  ``predict_batch_with_aux`` returns ``(boxes [B, K, 4] yxyx, {'scores', 'labels', 'tokens',
  'objectness'})``: for a detector the prediction is boxes, not tokens. ``score_batch`` is the
  summed ``log sigmoid`` of each instance's label logit at the token the matching gives it.
  """

  def __init__(self, config: OwlConfig = gin.REQUIRED, *, image_size: int = 128,
               max_queries: int = 16, max_query_len: int = 8,
               loss: box_losses.DetectionLossConfig = box_losses.DetectionLossConfig(),
               keep_fraction: Optional[float] = None, objectness_top_k: Optional[int] = None,
               num_detections: int = 100):
    if keep_fraction is not None and not 0 < keep_fraction <= 1:
      raise ValueError(f"OwlModel.keep_fraction must be in (0, 1]; got {keep_fraction}")
    self.config = config
    self.module = OwlDetector(config)
    self.image_size = image_size
    self.max_queries = max_queries
    self.max_query_len = max_query_len
    self.loss = loss
    self.keep_fraction = keep_fraction
    self.objectness_top_k = objectness_top_k
    self.num_detections = num_detections
    self._jitted = {}

  # --- shapes -------------------------------------------------------------------------------
  def example_inputs(self, batch_size: int = 1):
    s = self.image_size
    return {"images": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32),
            "query_tokens": jax.ShapeDtypeStruct(
                (batch_size, self.max_queries, self.max_query_len), jnp.int32)}

  def check_feature_lengths(self, task_feature_lengths):
    base.check_lengths_fit(task_feature_lengths, "OwlModel",
                           {"query_length": ("max_query_len", self.max_query_len)})

  def get_initial_variables(self, rng, input_shapes=None, input_types=None):
    s = self.image_size
    images = jnp.zeros((1, s, s, 3), jnp.float32)
    queries = jnp.ones((1, 1, self.max_query_len), jnp.int32)
    return self.module.init(rng, images, queries)

  def num_patches(self, image_size: Optional[int] = None) -> int:
    patch = self.config.vit.resolved().patch_size
    return ((image_size or self.image_size) // patch) ** 2

  # --- batch --------------------------------------------------------------------------------
  @staticmethod
  def check_batch(batch, keys=BATCH_KEYS):
    missing = [k for k in keys if k not in batch]
    if missing:
      raise KeyError(f"OwlModel: batch is missing {missing}; it has {sorted(batch)} "
                     f"(see palix.models.owl for the detection batch)")
    images = single_images(batch["images"])
    b = np.shape(images)[0]
    expected = {"query_tokens": 3, "boxes": 3, "box_labels": 2}
    for key in keys:
      if key in expected and (np.ndim(batch[key]) != expected[key]
                              or np.shape(batch[key])[0] != b):
        raise ValueError(f"OwlModel: batch[{key!r}] has shape {tuple(np.shape(batch[key]))}; "
                         f"expected {expected[key]} axes with batch size {b}")
    if "boxes" in keys and (np.shape(batch["boxes"])[-1] != 4
                            or np.shape(batch["boxes"])[:2] != np.shape(batch["box_labels"])):
      raise ValueError(f"OwlModel: batch['boxes'] {tuple(np.shape(batch['boxes']))} and "
                       f"batch['box_labels'] {tuple(np.shape(batch['box_labels']))} must be "
                       "[B, M, 4] and [B, M]")
    return images

  # --- training -----------------------------------------------------------------------------
  def _train_keep(self, images) -> Optional[int]:
    if self.keep_fraction is None or self.keep_fraction >= 1:
      return None
    total = self.num_patches(images.shape[1])
    return max(1, int(round(self.keep_fraction * total)))

  def matched_outputs(self, params, batch, rng=None):
    """Outputs, the matching and the per-example losses of one batch."""
    images = self.check_batch(batch)
    rngs = {"dropout": rng} if rng is not None else None
    keep = self._train_keep(images) if rng is not None else None
    top_k = self.objectness_top_k if rng is not None else None
    outputs = self.module.apply({"params": params}, images, batch["query_tokens"], keep=keep,
                                top_k=top_k, train=rng is not None, rngs=rngs)
    matched = matching.match(outputs["logits"], outputs["pred_boxes"], batch["boxes"],
                             batch["box_labels"], **self.loss.cost_kwargs)
    query_mask = batch["query_tokens"][..., 0] > 0
    losses = box_losses.detection_losses(outputs, matched, batch["boxes"], batch["box_labels"],
                                         query_mask, self.loss)
    return outputs, matched, losses

  def loss_fn(self, params, batch, rng):
    outputs, matched, losses = self.matched_outputs(params, batch, rng)
    loss = box_losses.total_loss(losses, self.loss)
    pair = (matched >= 0) & (batch["box_labels"] >= 0)
    boxes = jnp.take_along_axis(outputs["pred_boxes"], jnp.maximum(matched, 0)[..., None], 1)
    iou = box_ops.iou(box_ops.cxcywh_to_yxyx(boxes), box_ops.cxcywh_to_yxyx(batch["boxes"]))
    metrics = {f"loss_{k}": jnp.mean(v) for k, v in losses.items() if k != "num_instances"}
    metrics["matched_iou"] = jnp.sum(iou * pair) / jnp.maximum(jnp.sum(pair), 1)
    metrics["num_instances"] = jnp.sum(losses["num_instances"])
    return loss, metrics

  def score_batch(self, params, batch):
    outputs, matched, _ = self.matched_outputs(params, batch)
    labels = batch["box_labels"]
    pair = (matched >= 0) & (labels >= 0)
    per_token = jnp.take_along_axis(outputs["logits"], jnp.maximum(matched, 0)[..., None], 1)
    logit = jnp.take_along_axis(per_token, jnp.maximum(labels, 0)[..., None], 2)[..., 0]
    return jnp.sum(jax.nn.log_sigmoid(logit) * pair, axis=1)

  # --- inference ----------------------------------------------------------------------------
  def detect(self, params, images, query_tokens) -> Dict[str, jax.Array]:
    """Every token's ``boxes [B, P, 4]`` (yxyx), ``scores [B, P, Q]`` (sigmoid; padded queries
    0) and ``objectness [B, P]`` (sigmoid), jitted. No token dropping or selection."""
    if "detect" not in self._jitted:
      self._jitted["detect"] = jax.jit(functools.partial(_detect, self.module))
    return self._jitted["detect"](params, single_images(images),
                                  jnp.asarray(query_tokens, jnp.int32))

  def predict_batch_with_aux(self, params, batch, rng=None, *, num_detections=None,
                             **unused_kwargs):
    self.check_batch(batch, ("images", "query_tokens"))
    num = int(num_detections or self.num_detections)
    key = ("predict", num)
    if key not in self._jitted:
      self._jitted[key] = jax.jit(functools.partial(_predict, self.module, num=num))
    return self._jitted[key](params, single_images(batch["images"]), batch["query_tokens"])


def _detect(module, params, images, query_tokens):
  out = module.apply({"params": params}, images, query_tokens)
  return {"boxes": box_ops.cxcywh_to_yxyx(out["pred_boxes"]),
          "scores": jax.nn.sigmoid(out["logits"]),
          "objectness": jax.nn.sigmoid(out["objectness"])}


def _predict(module, params, images, query_tokens, *, num):
  out = module.apply({"params": params}, images, query_tokens)
  best = top_detections(out["pred_boxes"], out["logits"], num)
  aux = {k: v for k, v in best.items() if k != "boxes"}
  aux["objectness"] = jax.nn.sigmoid(out["objectness"])
  return best["boxes"], aux
