"""CapPa: an image captioner (ViT encoder + Transformer decoder) trained with parallel prediction.

"Image Captioners Are Scalable Vision Learners Too" (Tschannen et al. 2023; papers.md §2.5). The
ViT keeps all its tokens (``NoPool``); the decoder (``palix.models.cappa_decoder``) cross-attends to
them. In training each example independently uses, with probability ``masked_pred_prob`` (0.75 in
the paper), *parallel prediction* (all decoder inputs ``[MASK]``, non-causal self-attention: every
caption token is predicted from the image alone), otherwise autoregressive teacher forcing.
``masked_pred_prob=0`` is the plain captioner ("Cap"). Inference is autoregressive: greedy
decoding with a KV cache, or scoring texts by likelihood (zero-shot classification).

``CapPa`` is the Flax module; ``CapPaModel`` implements the model contract (``palix.models.base``)
so the palix trainer drives it like PaLI-X. The ViT sits under ``vit`` as in ``PaliX``, so a CapPa
checkpoint's encoder transfers into PaLI-X by path.
"""

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from palix import decoding
from palix.models import base
from palix.models import losses
from palix.models.batch_checks import validate_batch
from palix.models.cappa_decoder import CapPaDecoder, DecoderConfig
from palix.models.vit import NoPool, ViT, ViTConfig


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CapPaConfig:
  """The captioner's shape. Decoder sizes of 0 mean "the encoder's" (as in big_vision).

  Attributes:
    vit: the image encoder (``pool`` is forced to ``NoPool``: the decoder sees every token).
    vocab_size: output vocabulary; the ``[MASK]`` input id is ``vocab_size``.
    max_len: decoder positions (the learned position table; targets may not be longer).
    decoder_depth, decoder_width, decoder_heads, decoder_mlp_dim: decoder sizes.
    decoder_bias: biases on the decoder block norms and MLPs (big_vision's CapPa config: False).
    dropout_rate: decoder dropout.
  """
  vit: ViTConfig = gin.REQUIRED
  vocab_size: int = 32000
  max_len: int = 64
  decoder_depth: int = 6
  decoder_width: int = 0
  decoder_heads: int = 0
  decoder_mlp_dim: int = 0
  decoder_bias: bool = False
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"

  def decoder(self) -> DecoderConfig:
    v = self.vit.resolved()
    width = self.decoder_width or v.width
    heads = self.decoder_heads or v.num_heads
    if width % heads:
      raise ValueError(f"CapPaConfig: decoder width {width} is not divisible by its {heads} heads")
    return DecoderConfig(
        vocab_size=self.vocab_size, max_len=self.max_len, width=width, depth=self.decoder_depth,
        num_heads=heads, mlp_dim=self.decoder_mlp_dim or v.mlp_dim, use_bias=self.decoder_bias,
        dropout_rate=self.dropout_rate, layer_norm_eps=v.layer_norm_eps,
        dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype),
        attention_impl=v.attention_impl)


class CapPa(nn.Module):
  """Images ``[B, H, W, 3]`` + decoder input tokens -> logits. Methods for ``apply(method=...)``."""
  config: CapPaConfig

  def setup(self):
    self.vit = ViT(dataclasses.replace(self.config.vit.resolved(), pool=NoPool), name="vit")
    self.decoder = CapPaDecoder(self.config.decoder(), name="decoder")

  def encode(self, images, deterministic=True):
    """Image tokens ``[B, P, E]`` (after the ViT's final norm)."""
    _, out = self.vit(images, train=not deterministic)
    return out["encoded"]

  def encode_pooled(self, images):
    """Global average of the image tokens ``[B, E]`` (the linear-probe representation)."""
    return jnp.mean(self.encode(images).astype(jnp.float32), axis=1)

  def decode(self, encoded, decoder_input_tokens, parallel=None, deterministic=True):
    return self.decoder(encoded, decoder_input_tokens, parallel, deterministic)

  def init_decode_cache(self, encoded, max_decode_len):
    return self.decoder.init_decode_cache(encoded, max_decode_len)

  def decode_step(self, cache, tokens, step):
    return self.decoder.decode_step(cache, tokens, step)

  def __call__(self, images, decoder_input_tokens, parallel=None, deterministic=True):
    encoded = self.encode(images, deterministic)
    return self.decode(encoded, decoder_input_tokens, parallel, deterministic)


_TARGET_KEYS = ("decoder_target_tokens", "decoder_loss_weights")  # with decoder_input_tokens


@gin.configurable
class CapPaModel(base.BaseModel):
  """The CapPa model contract: init, loss (mixed AR/parallel), greedy decoding, scoring.

  Batch: ``images`` ``[B, 1, H, W, 3]`` (the data layer's layout with one image slot) or
  ``[B, H, W, 3]``; ``decoder_input_tokens``, ``decoder_target_tokens``, ``decoder_loss_weights``
  as in ``palix.models.base``. ``image_mask`` and ``encoder_input_tokens`` (the caption prompt)
  are ignored: the captioner has no text input.

  Args:
    config: the module config.
    masked_pred_prob: per-example probability of parallel prediction in ``loss_fn`` (paper 0.75;
      0 gives plain Cap). ``loss_fn`` with ``rng=None`` (evaluation) always uses AR mode.
    image_size, max_target_len: geometry for ``example_inputs`` and the default decode length.
    decode_fn, decode_kwargs: a ``palix.decoding`` function and its default keyword arguments.
    label_smoothing, z_loss: loss options (big_vision's CapPa uses neither).
    eos_id: end-of-sequence id (T5 layout: 1).
  """

  def __init__(self, config: CapPaConfig = gin.REQUIRED, *, masked_pred_prob: float = 0.75,
               image_size: int = 224, max_target_len: int = 64,
               decode_fn: Optional[Callable] = None, decode_kwargs: Optional[Mapping] = None,
               label_smoothing: float = 0.0, z_loss: float = 0.0, eos_id: int = 1):
    if not 0.0 <= masked_pred_prob <= 1.0:
      raise ValueError(f"CapPaModel.masked_pred_prob must be in [0, 1], got {masked_pred_prob}")
    if max_target_len > config.max_len:
      raise ValueError(f"CapPaModel.max_target_len {max_target_len} exceeds CapPaConfig.max_len "
                       f"{config.max_len}")
    self.config = config
    self.module = CapPa(config)
    self.masked_pred_prob = float(masked_pred_prob)
    self.image_size = image_size
    self.max_target_len = max_target_len
    self.decode_fn = decode_fn or decoding.greedy
    self.decode_kwargs = dict(decode_kwargs or {})
    self.label_smoothing = label_smoothing
    self.z_loss = z_loss
    self.eos_id = eos_id
    self._jitted = {}

  def check_feature_lengths(self, task_feature_lengths):
    base.check_lengths_fit(task_feature_lengths, type(self).__name__,
                           {"targets": ("max_target_len", self.max_target_len)})

  # --- shapes -------------------------------------------------------------------------------
  def example_inputs(self, batch_size: int = 1):
    """Abstract inputs of ``CapPa.__call__`` (single images)."""
    s = self.image_size
    return {"images": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32),
            "decoder_input_tokens": jax.ShapeDtypeStruct((batch_size, self.max_target_len),
                                                         jnp.int32)}

  def get_initial_variables(self, rng, input_shapes=None, input_types=None):
    """Variables for the batch geometry ``input_shapes`` (images 4-D or 5-D; extra keys ignored)."""
    input_shapes = dict(input_shapes or {})
    s = self.image_size
    image_shape = tuple(input_shapes.get("images", (1, s, s, 3)))
    if len(image_shape) == 5:
      image_shape = (image_shape[0],) + image_shape[2:]
    length = tuple(input_shapes.get("decoder_input_tokens", (1, self.max_target_len)))
    images = jnp.zeros(image_shape, jnp.float32)
    tokens = jnp.zeros(length, jnp.int32)
    return self.module.init(rng, images, tokens)

  # --- batch plumbing -----------------------------------------------------------------------
  @staticmethod
  def single_images(batch) -> Any:
    """``batch['images']`` as ``[B, H, W, 3]``; a 5-D batch must have exactly one image slot."""
    images = batch["images"]
    if np.ndim(images) == 5:
      if np.shape(images)[1] != 1:
        raise ValueError(f"CapPa captions one image per example; batch['images'] has shape "
                         f"{tuple(np.shape(images))} ({np.shape(images)[1]} image slots). Use "
                         "NUM_IMAGES = 1")
      return images[:, 0]
    if np.ndim(images) != 4 or np.shape(images)[-1] != 3:
      raise ValueError(f"batch['images'] has shape {tuple(np.shape(images))}; expected "
                       "[batch, 1, height, width, 3] or [batch, height, width, 3]")
    return images

  def _check(self, batch, keys):
    others = [k for k in keys if k != "images"]
    validate_batch(batch, others)
    if "images" in keys:
      if "images" not in batch:
        raise KeyError(f"batch is missing 'images'; it has {sorted(batch)}")
      b = np.shape(batch["images"])[0]
      if others and np.shape(batch[others[0]])[0] != b:
        raise ValueError(f"batch['images'] has batch size {b} but batch[{others[0]!r}] has "
                         f"{np.shape(batch[others[0]])[0]}")

  def parallel_flags(self, rng, batch_size: int):
    """Which examples use parallel prediction: bool ``[B]``, Bernoulli(``masked_pred_prob``)."""
    return jax.random.uniform(rng, (batch_size,)) < self.masked_pred_prob

  # --- training -----------------------------------------------------------------------------
  def compute_logits(self, params, batch, parallel=None, dropout_rng=None):
    """Logits ``[B, L, V]``; ``parallel`` (bool ``[B]`` or None = all AR) picks each row's mode."""
    self._check(batch, ("images", "decoder_input_tokens"))
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": params}, self.single_images(batch),
                             batch["decoder_input_tokens"], parallel,
                             deterministic=dropout_rng is None, rngs=rngs)

  def loss_for_modes(self, params, batch, parallel=None, dropout_rng=None):
    """Token CE over ``decoder_loss_weights`` with the given per-example modes."""
    self._check(batch, ("images", "decoder_input_tokens") + _TARGET_KEYS)
    logits = self.compute_logits(params, batch, parallel, dropout_rng)
    loss, metrics = losses.weighted_cross_entropy_loss(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
        label_smoothing=self.label_smoothing, z_loss=self.z_loss)
    b = batch["decoder_target_tokens"].shape[0]
    fraction = (jnp.zeros((), jnp.float32) if parallel is None
                else jnp.mean(jnp.broadcast_to(parallel, (b,)).astype(jnp.float32)))
    metrics["parallel_fraction"] = fraction
    return loss, metrics

  def loss_fn(self, params, batch, rng):
    """Training loss: each example in parallel mode with probability ``masked_pred_prob``.

    The modes come from ``fold_in(rng, 0)`` (see ``parallel_flags``), dropout from
    ``fold_in(rng, 1)``; ``rng=None`` is evaluation: all AR, no dropout.
    """
    if rng is None:
      return self.loss_for_modes(params, batch)
    b = np.shape(batch["decoder_input_tokens"])[0]
    parallel = self.parallel_flags(jax.random.fold_in(rng, 0), b)
    return self.loss_for_modes(params, batch, parallel, jax.random.fold_in(rng, 1))

  def score_batch(self, params, batch):
    """Sum over target tokens of AR ``log p(target)``, weighted by ``decoder_loss_weights``."""
    self._check(batch, ("images", "decoder_input_tokens") + _TARGET_KEYS)
    logits = self.compute_logits(params, batch)
    return _sequence_logprob(logits, batch["decoder_target_tokens"],
                             batch["decoder_loss_weights"])

  # --- features, scoring and decoding -------------------------------------------------------
  def _jit(self, name, fn, **static):
    key = (name,) + tuple(sorted(static.items()))
    if key not in self._jitted:
      self._jitted[key] = jax.jit(functools.partial(fn, **static))
    return self._jitted[key]

  def encode_pooled(self, params, images):
    """GAP of the encoder's tokens ``[B, E]`` for images ``[B, H, W, 3]`` or ``[B, 1, H, W, 3]``."""
    images = self.single_images({"images": images})
    return self._jit("pooled", self._pooled)(params, images)

  def _pooled(self, params, images):
    return self.module.apply({"params": params}, images, method=CapPa.encode_pooled)

  def score_classes(self, params, images, class_targets):
    """AR log-likelihood of every class text for every image: ``[B, C]``.

    ``class_targets`` ``[C, L]`` are target token rows (EOS included, 0 = padding). Each image is
    encoded once; the classes go through the decoder one at a time (``lax.map``).
    """
    images = self.single_images({"images": images})
    class_targets = jnp.asarray(class_targets, jnp.int32)
    if class_targets.ndim != 2 or class_targets.shape[1] > self.config.max_len:
      raise ValueError(f"class_targets has shape {tuple(class_targets.shape)}; expected "
                       f"[num_classes, length <= {self.config.max_len}]")
    return self._jit("classes", self._score_classes)(params, images, class_targets)

  def _score_classes(self, params, images, class_targets):
    encoded = self.module.apply({"params": params}, images, method=CapPa.encode)
    b = encoded.shape[0]

    def one_class(targets):
      targets = jnp.broadcast_to(targets, (b,) + targets.shape)
      inputs = base.shift_right(targets, xp=jnp)
      logits = self.module.apply({"params": params}, encoded, inputs, method=CapPa.decode)
      return _sequence_logprob(logits, targets, (targets > 0).astype(jnp.float32))

    return jax.lax.map(one_class, class_targets).T

  def predict_batch_with_aux(self, params, batch, rng=None, *, decode_fn=None,
                             max_decode_len=None, max_new_tokens=None, **decode_kwargs):
    """Greedy (or ``decode_fn``) captions: ``(tokens [B, L], {'logprobs', 'lengths', ...})``;
    ``L`` is ``max_decode_len`` (alias ``max_new_tokens``; default ``max_target_len``)."""
    self._check(batch, ("images",))
    kwargs = {"eos_id": self.eos_id, **self.decode_kwargs, **decode_kwargs}
    length = decoding.decode_length(max_decode_len, max_new_tokens, self.max_target_len)
    setup = (decode_fn or self.decode_fn, int(length), tuple(sorted(kwargs.items())))
    fn = self._jit("predict", self._predict, setup=setup)
    return fn(params, self.single_images(batch), rng)

  def _predict(self, params, images, rng, *, setup):
    decode_fn, max_decode_len, kwargs = setup
    kwargs = dict(kwargs)
    if rng is not None:
      kwargs["rng"] = rng
    variables = {"params": params}
    encoded = self.module.apply(variables, images, method=CapPa.encode)
    cache = self.module.apply(variables, encoded, max_decode_len, method=CapPa.init_decode_cache)

    def tokens_to_logits(cache, tokens, step):
      return self.module.apply(variables, cache, tokens, step, method=CapPa.decode_step)

    result = decode_fn(tokens_to_logits, cache, batch_size=images.shape[0],
                       max_decode_len=max_decode_len, **kwargs)
    aux = {k: v for k, v in result._asdict().items() if k != "tokens"}
    return result.tokens, aux


def _sequence_logprob(logits, targets, weights):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_logp = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
  return (token_logp * weights).sum(axis=-1)
