"""Image-text embedding model trained with the sigmoid contrastive loss (SigLIP).

"Sigmoid Loss for Language Image Pre-Training" (Zhai et al. 2023): every image-text pair of a
batch is an independent binary problem, ``logit = exp(t) * <img, txt> + b`` with both embeddings
L2-normalised, positives on the diagonal. ``t`` starts at ``log 10`` and ``b`` at ``-10`` (the
paper's initialisation: the many negatives start with a small loss). The loss is
``-1/B sum_ij log sigmoid(z_ij * logit_ij)``.

Captions that repeat within a batch (palix's embedded caption tasks have a few dozen distinct
captions, e.g. ``a photo of a trouser``) are *positives* for every image they describe: a pair is
labelled ``z = +1`` when the two token rows are equal, not only on the diagonal. Calling
them negatives would train the model to tell apart images that have the same caption.

The image tower is palix's ViT; its ``pool`` (``GlobalAveragePool`` or ``MAPHead``) gives the
image embedding. The text tower is chosen in gin (``palix.models.text_tower``). This model is
what the OWL detector (``palix.models.owl``) starts from: the parameter names ``vit``, ``text``
and ``text_projection`` are shared.

Batch (the caption tasks of ``palix.tasks`` as they are): ``images`` ``[B, 1, H, W, 3]`` or
``[B, H, W, 3]`` and ``decoder_target_tokens`` ``[B, L]`` (the caption with EOS; 0 = padding).
Other keys are ignored.
"""

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from palix.layers import initializers as inits
from palix.layers.box_heads import l2_normalize
from palix.models import base
from palix.models.vit import ViT, ViTConfig

TEXT_KEY = "decoder_target_tokens"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ImageTextConfig:
  """Attributes:
    vit: the image tower; set ``ViTConfig.pool`` to ``vit.GlobalAveragePool`` or ``vit.MAPHead``.
    text: ``TextTowerConfig()`` or ``T5TextTowerConfig()`` (``palix.models.text_tower``).
    embed_dim: width of the joint embedding space.
    logit_scale_init, logit_bias_init: SigLIP's ``log t`` and ``b`` at initialisation.
  """
  vit: ViTConfig = gin.REQUIRED
  text: Any = gin.REQUIRED
  embed_dim: int = 128
  logit_scale_init: float = math.log(10.0)
  logit_bias_init: float = -10.0


def joint_projection(embed_dim: int, name: str) -> nn.Dense:
  # The joint width is named ``mlp`` for partitioning, like any hidden width.
  return nn.Dense(embed_dim, kernel_init=nn.with_logical_partitioning(
      inits.lecun_normal, ("embed", "mlp")), bias_init=nn.with_logical_partitioning(
          inits.zeros, ("mlp",)), name=name)


class ImageText(nn.Module):
  """The two towers and their projections. Methods for ``apply(method=...)``."""
  config: ImageTextConfig

  def setup(self):
    c = self.config
    self.vit = ViT(c.vit.resolved(), name="vit")
    self.text = c.text.make("text")
    self.image_projection = joint_projection(c.embed_dim, "image_projection")
    self.text_projection = joint_projection(c.embed_dim, "text_projection")
    self.logit_scale = self.param("logit_scale", nn.with_logical_partitioning(
        nn.initializers.constant(c.logit_scale_init), ()), (), jnp.float32)
    self.logit_bias = self.param("logit_bias", nn.with_logical_partitioning(
        nn.initializers.constant(c.logit_bias_init), ()), (), jnp.float32)

  def encode_images(self, images, train: bool = False):
    """L2-normalised image embeddings ``[B, E]``."""
    pooled, _ = self.vit(images, train=train)
    if pooled.ndim != 2:
      raise ValueError("ImageText needs a pooled image embedding: set ViTConfig.pool to "
                       "vit.GlobalAveragePool or vit.MAPHead (NoPool returns every token)")
    return l2_normalize(self.image_projection(pooled).astype(jnp.float32))

  def encode_texts(self, tokens, train: bool = False):
    """L2-normalised text embeddings ``[B, E]`` of token rows ``[B, L]``."""
    pooled = self.text(tokens, deterministic=not train)
    return l2_normalize(self.text_projection(pooled).astype(jnp.float32))

  def pair_logits(self, image_embeddings, text_embeddings):
    """``[Bi, Bt]`` SigLIP logits ``exp(t) <img, txt> + b``."""
    return (jnp.exp(self.logit_scale) * image_embeddings @ text_embeddings.T
            + self.logit_bias)

  def __call__(self, images, tokens, train: bool = False):
    return self.pair_logits(self.encode_images(images, train), self.encode_texts(tokens, train))


def single_images(images):
  """``[B, 1, H, W, 3]`` or ``[B, H, W, 3]`` -> ``[B, H, W, 3]`` (one image per example)."""
  shape = tuple(np.shape(images))
  if len(shape) == 5:
    if shape[1] != 1:
      raise ValueError(f"batch['images'] has shape {shape} ({shape[1]} image slots); image-text "
                       "and detection models take one image per example (NUM_IMAGES = 1)")
    return images[:, 0]
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"batch['images'] has shape {shape}; expected [batch, 1, height, width, 3] "
                     "or [batch, height, width, 3]")
  return images


def sigmoid_loss(logits, positives):
  """SigLIP loss ``-1/B sum_ij log sigmoid(z_ij logit_ij)``, ``z = +1`` on ``positives``."""
  z = jnp.where(positives, 1.0, -1.0)
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / logits.shape[0]


def same_text(tokens):
  """``[B, B]`` True where two token rows are identical (repeated captions are positives)."""
  return jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)


@gin.configurable
class ImageTextModel(base.BaseModel):
  """The model contract for ``ImageText`` (see the module docstring for the batch).

  * ``loss_fn``: the sigmoid loss; metrics ``retrieval_accuracy`` (the image's best-scoring text
    in the batch is one of its positives) and the current ``logit_scale`` and ``logit_bias``;
  * ``score_batch``: ``log sigmoid(logit)`` of each image with its own text, the model's
    log-probability that the pair matches;
  * ``predict_batch_with_aux``: image embeddings ``[B, E]``, and text embeddings in the aux dict
    when the batch has texts (a contrastive model writes no tokens);
  * ``zero_shot_logits``: every image against every class text (zero-shot classification).
  """

  def __init__(self, config: ImageTextConfig = gin.REQUIRED, *, image_size: int = 224,
               max_text_len: int = 16):
    self.config = config
    self.module = ImageText(config)
    self.image_size = image_size
    self.max_text_len = max_text_len
    self._jitted = {}

  def example_inputs(self, batch_size: int = 1):
    s = self.image_size
    return {"images": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32),
            "tokens": jax.ShapeDtypeStruct((batch_size, self.max_text_len), jnp.int32)}

  def check_feature_lengths(self, task_feature_lengths):
    base.check_lengths_fit(task_feature_lengths, "ImageTextModel",
                           {"targets": ("max_text_len", self.max_text_len)})

  def get_initial_variables(self, rng, input_shapes=None, input_types=None):
    s = self.image_size
    images = jnp.zeros((1, s, s, 3), jnp.float32)
    tokens = jnp.ones((1, self.max_text_len), jnp.int32)
    return self.module.init(rng, images, tokens)

  def _inputs(self, batch):
    if "images" not in batch or TEXT_KEY not in batch:
      raise KeyError(f"ImageTextModel needs batch['images'] and batch[{TEXT_KEY!r}] (the caption "
                     f"tokens); the batch has {sorted(batch)}")
    images, tokens = single_images(batch["images"]), batch[TEXT_KEY]
    if np.shape(tokens)[0] != np.shape(images)[0] or np.ndim(tokens) != 2:
      raise ValueError(f"batch[{TEXT_KEY!r}] has shape {tuple(np.shape(tokens))}; expected "
                       f"[{np.shape(images)[0]}, length] (one caption per image)")
    return images, tokens

  def loss_fn(self, params, batch, rng):
    images, tokens = self._inputs(batch)
    rngs = {"dropout": rng} if rng is not None else None
    logits = self.module.apply({"params": params}, images, tokens, train=rng is not None,
                               rngs=rngs)
    positives = same_text(tokens)
    loss = sigmoid_loss(logits, positives)
    best = jnp.argmax(logits, axis=1)
    retrieval = jnp.take_along_axis(positives, best[:, None], axis=1)[:, 0]
    return loss, {"retrieval_accuracy": jnp.mean(retrieval.astype(jnp.float32)),
                  "logit_scale": jnp.exp(params["logit_scale"]),
                  "logit_bias": params["logit_bias"]}

  def score_batch(self, params, batch):
    images, tokens = self._inputs(batch)
    variables = {"params": params}
    img = self.module.apply(variables, images, method=ImageText.encode_images)
    txt = self.module.apply(variables, tokens, method=ImageText.encode_texts)
    logits = jnp.exp(params["logit_scale"]) * jnp.sum(img * txt, axis=-1) + params["logit_bias"]
    return jax.nn.log_sigmoid(logits)

  def predict_batch_with_aux(self, params, batch, rng=None, **unused_kwargs):
    variables = {"params": params}
    images = single_images(batch["images"])
    aux = {}
    if TEXT_KEY in batch:
      aux["text_embeddings"] = self.module.apply(variables, batch[TEXT_KEY],
                                                 method=ImageText.encode_texts)
    return self.module.apply(variables, images, method=ImageText.encode_images), aux

  def zero_shot_logits(self, params, images, class_tokens):
    """``[B, C]`` logits of images ``[B, H, W, 3]`` against class token rows ``[C, L]``."""
    if "zero_shot" not in self._jitted:
      self._jitted["zero_shot"] = jax.jit(functools.partial(
          self.module.apply, method=_zero_shot_logits))
    return self._jitted["zero_shot"]({"params": params}, single_images(images),
                                     jnp.asarray(class_tokens, jnp.int32))


def _zero_shot_logits(module: ImageText, images, class_tokens):
  return module.pair_logits(module.encode_images(images), module.encode_texts(class_tokens))
