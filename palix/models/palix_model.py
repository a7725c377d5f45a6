"""PaLI-X: ViT patch tokens, projected to the text width, prepended to the prompt in a T5/UL2 encoder.

Every image of an example (few-shot exemplars, video frames) goes through the ViT independently, so
``N`` images of ``k`` patches give ``N*k`` visual tokens. Images whose ``image_mask`` is 0 are masked
out of the encoder, and the encoder's relative positions count only real tokens, so masking an image
is the same as dropping it.

``PaliX`` is the Flax module; ``PaliXModel`` implements the model contract (``palix.models.base``).
"""

import dataclasses
import functools
from typing import Callable, Mapping, Optional, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from palix import decoding
from palix.layers import initializers as inits
from palix.models import base
from palix.models import losses
from palix.models.batch_checks import validate_batch
from palix.models.t5 import T5Config, T5EncoderDecoder
from palix.models.vit import NoPool, ViT, ViTConfig


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PaliXConfig:
  """The two towers plus how images enter the encoder.

  Attributes:
    vit: the vision encoder (its ``pool`` is forced to ``NoPool``: PaLI-X uses every token).
    t5: the text encoder-decoder.
    max_images: size of the learned per-image (frame) embedding table; 0 disables it.
    freeze_vit: no gradient flows into the ViT (the trainer also gives it no optimizer state).
    segment_separator_id: token id that ends a text segment of an interleaved prompt (the palix
      vocabulary's ``<sep>``, 1027), or None: all text follows all images. See
      :func:`interleaved_order`.
  """
  vit: ViTConfig = gin.REQUIRED
  t5: T5Config = gin.REQUIRED
  max_images: int = 0
  freeze_vit: bool = False
  segment_separator_id: Optional[int] = None


def interleaved_order(image_mask, tokens, patches_per_image: int, separator_id: int):
  """Permutation that interleaves image tokens and text segments in the encoder sequence.

  The encoder sequence starts as ``[image 0 patches, ..., image N-1 patches, text]``. The text is
  cut into segments, each ending with ``separator_id`` (the last one with EOS). With ``m``
  segments and ``n`` valid images, segment ``j`` is placed right after valid image ``n - m + j``
  (segments beyond the images go first). So a k-shot prompt
  ``ex_1 <sep> ... ex_k <sep> query`` with images ``[img_1 .. img_k, query_img]`` becomes
  ``img_1 ex_1 ... img_k ex_k query_img query``, and a single segment (the usual prompt) follows
  all images, as without interleaving. Masked images and padding go last; being masked they do not
  matter, and since positions count real tokens only, the result equals dropping them.

  Returns ``int32 [B, N*patches + Le]``: position ``i`` of the new sequence takes element
  ``order[i]`` of the old one.
  """
  b, n = image_mask.shape
  length = tokens.shape[1]
  stride = patches_per_image + length  # room for one image and a whole text in each slot
  valid = image_mask > 0
  rank = jnp.cumsum(valid, axis=1) - 1
  slot = jnp.where(valid, rank, n + 1)
  image_keys = (slot[:, :, None] * stride
                + jnp.arange(patches_per_image)[None, None, :]).reshape(b, n * patches_per_image)
  real = tokens > 0
  ends = tokens == separator_id
  segment = jnp.cumsum(ends, axis=1) - ends  # separators seen before this token
  num_segments = jnp.max(jnp.where(real, segment + 1, 0), axis=1, keepdims=True)
  follows = valid.sum(axis=1, keepdims=True) - num_segments + segment
  position = jnp.arange(length)[None, :]
  text_keys = jnp.where(real, follows * stride + patches_per_image + position,
                        (n + 2) * stride + position)
  keys = jnp.concatenate([image_keys, text_keys], axis=1)
  return jnp.argsort(keys, axis=1, stable=True).astype(jnp.int32)


class PaliX(nn.Module):
  """See the module docstring. Methods are used through ``module.apply(..., method=...)``."""
  config: PaliXConfig

  def setup(self):
    c = self.config
    vit_cfg = dataclasses.replace(c.vit.resolved(), pool=NoPool)
    self.vit = ViT(vit_cfg, name="vit")
    t5 = c.t5
    self.projection = nn.Dense(
        t5.emb_dim, dtype=jnp.dtype(t5.dtype), param_dtype=jnp.dtype(t5.param_dtype),
        kernel_init=nn.with_logical_partitioning(inits.lecun_normal, ("vit_embed", "embed")),
        bias_init=nn.with_logical_partitioning(inits.zeros, ("embed",)), name="projection")
    if c.max_images:
      self.frame_embedding = self.param(
          "frame_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                          ("images", "embed")),
          (c.max_images, t5.emb_dim), jnp.dtype(t5.param_dtype))
    self.text = T5EncoderDecoder(t5, name="text")

  def embed_images(self, images, image_mask, deterministic=True):
    """``[B, N, H, W, 3]`` -> visual tokens ``[B, N*k, D]`` and their validity ``[B, N*k]``."""
    b, n, h, w, ch = images.shape
    _, out = self.vit(images.reshape(b * n, h, w, ch), train=not deterministic)
    tokens = out["encoded"]
    if self.config.freeze_vit:
      tokens = jax.lax.stop_gradient(tokens)
    tokens = self.projection(tokens)
    k, d = tokens.shape[1], tokens.shape[2]
    tokens = tokens.reshape(b, n, k, d)
    if self.config.max_images:
      if n > self.config.max_images:
        raise ValueError(f"images has {n} images per example but PaliXConfig.max_images is "
                         f"{self.config.max_images}")
      tokens = tokens + self.frame_embedding[None, :n, None, :].astype(tokens.dtype)
    valid = jnp.repeat(image_mask.astype(bool), k, axis=1)
    return tokens.reshape(b, n * k, d), valid

  def encode(self, images, image_mask, encoder_input_tokens, deterministic=True):
    """Returns ``(encoded [B, N*k + Le, D], encoder_mask [B, N*k + Le])``.

    With ``segment_separator_id`` set, the sequence is interleaved (:func:`interleaved_order`);
    the decoder's cross-attention does not depend on the order.
    """
    visual, visual_valid = self.embed_images(images, image_mask, deterministic)
    text = self.text.embed(encoder_input_tokens)
    embeds = jnp.concatenate([visual.astype(text.dtype), text], axis=1)
    mask = jnp.concatenate([visual_valid, encoder_input_tokens > 0], axis=1)
    if self.config.segment_separator_id is not None:
      order = interleaved_order(image_mask, encoder_input_tokens, visual.shape[1] // images.shape[1],
                                self.config.segment_separator_id)
      embeds = jnp.take_along_axis(embeds, order[:, :, None], axis=1)
      mask = jnp.take_along_axis(mask, order, axis=1)
    # Positions count real tokens only, so a masked image leaves no gap (masking == dropping).
    positions = jnp.cumsum(mask, axis=1) - 1
    encoded = self.text.encode(embeds, mask, positions=positions, deterministic=deterministic)
    return encoded, mask

  def decode(self, encoded, encoder_mask, decoder_input_tokens, deterministic=True):
    return self.text.decode(encoded, encoder_mask, decoder_input_tokens,
                            deterministic=deterministic)

  def init_decode_cache(self, encoded, encoder_mask, max_decode_len):
    return self.text.init_decode_cache(encoded, encoder_mask, max_decode_len)

  def decode_step(self, cache, tokens, step):
    return self.text.decode_step(cache, tokens, step)

  def __call__(self, images, image_mask, encoder_input_tokens, decoder_input_tokens,
               deterministic=True):
    encoded, mask = self.encode(images, image_mask, encoder_input_tokens, deterministic)
    return self.decode(encoded, mask, decoder_input_tokens, deterministic)


# The inputs of ``PaliX.__call__``, in its argument order.
_INPUT_KEYS = base.INPUT_KEYS + ("decoder_input_tokens",)


@gin.configurable
class PaliXModel(base.BaseModel):
  """The PaLI-X model contract: init, loss, decoding and scoring over batches (see ``base``).

  Args:
    config: the module config.
    image_size, num_images, max_input_len, max_target_len: the batch geometry used for
      ``example_inputs`` and for input validation (prompts longer than ``max_input_len`` are
      rejected with an error rather than silently cut).
    decode_fn: a ``palix.decoding`` function (``greedy``, ``temperature_sample``, ``beam_search``).
    decode_kwargs: default keyword arguments of ``decode_fn`` (e.g. ``beam_size``, ``alpha``).
    label_smoothing, z_loss: loss options (t5x semantics).
    loss_normalization: ``"tokens"`` (mean over real target tokens) or ``"sequences"``.
    eos_id: end-of-sequence id (T5 layout: 1).
    loc_token_sigma: if > 0, location-token targets are Gaussians of this width (in bins) over
      the neighbouring bins (``losses.ordinal_cross_entropy``) instead of one-hot.
    first_loc_id, num_loc_bins: where the location tokens are (``palix.tasks.vocabulary``).
  """

  def __init__(self, config: PaliXConfig = gin.REQUIRED, *, image_size: int = 224,
               num_images: int = 1, max_input_len: int = 32, max_target_len: int = 32,
               decode_fn: Optional[Callable] = None, decode_kwargs: Optional[Mapping] = None,
               label_smoothing: float = 0.0, z_loss: float = 1e-4,
               loss_normalization: str = "tokens", eos_id: int = 1,
               loc_token_sigma: float = 0.0, first_loc_id: int = 3, num_loc_bins: int = 1024):
    self.config = config
    self.module = PaliX(config)
    self.image_size = image_size
    self.num_images = num_images
    self.max_input_len = max_input_len
    self.max_target_len = max_target_len
    self.decode_fn = decode_fn or decoding.greedy
    self.decode_kwargs = dict(decode_kwargs or {})
    self.label_smoothing = label_smoothing
    self.z_loss = z_loss
    if loss_normalization not in ("tokens", "sequences"):
      raise ValueError(f"loss_normalization must be 'tokens' or 'sequences', got "
                       f"{loss_normalization!r}")
    self.loss_normalization = loss_normalization
    self.eos_id = eos_id
    if loc_token_sigma < 0:
      raise ValueError(f"loc_token_sigma must be >= 0 (0: one-hot targets); got {loc_token_sigma}")
    self.ordinal_bins = ((first_loc_id, num_loc_bins, float(loc_token_sigma))
                         if loc_token_sigma > 0 else None)
    self._predict_fns = {}

  # --- shapes -------------------------------------------------------------------------------
  def input_shapes(self, batch_size: int = 1):
    return base.batch_shapes(
        batch_size, num_images=self.num_images, image_size=self.image_size,
        feature_lengths={"inputs": self.max_input_len, "targets": self.max_target_len},
        keys=_INPUT_KEYS)

  def example_inputs(self, batch_size: int = 1):
    dtypes = base.batch_dtypes(_INPUT_KEYS)
    return {k: jax.ShapeDtypeStruct(v, dtypes[k])
            for k, v in self.input_shapes(batch_size).items()}

  def get_initial_variables(self, rng, input_shapes=None, input_types=None):
    input_shapes = input_shapes or self.input_shapes()
    input_types = {**base.batch_dtypes(_INPUT_KEYS), **(input_types or {})}
    dummy = {k: jnp.zeros(input_shapes[k], input_types[k]) for k in _INPUT_KEYS}
    dummy["image_mask"] = jnp.ones_like(dummy["image_mask"])
    return self.module.init(rng, **dummy)

  def check_feature_lengths(self, task_feature_lengths):
    base.check_lengths_fit(task_feature_lengths, type(self).__name__,
                      {"inputs": ("max_input_len", self.max_input_len),
                       "targets": ("max_target_len", self.max_target_len)})

  def frozen_param_prefixes(self) -> Tuple[str, ...]:
    return ("vit",) if self.config.freeze_vit else ()

  # --- training -----------------------------------------------------------------------------
  def _check(self, batch, keys):
    validate_batch(batch, keys, max_input_len=self.max_input_len)

  def compute_logits(self, params, batch, rng=None):
    self._check(batch, _INPUT_KEYS)
    rngs = {"dropout": rng} if rng is not None else None
    return self.module.apply({"params": params}, *(batch[k] for k in _INPUT_KEYS),
                             deterministic=rng is None, rngs=rngs)

  def loss_fn(self, params, batch, rng):
    self._check(batch, base.INPUT_KEYS + base.TARGET_KEYS)
    logits = self.compute_logits(params, batch, rng)
    return losses.weighted_cross_entropy_loss(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
        label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        normalization=self.loss_normalization, ordinal_bins=self.ordinal_bins)

  def score_batch(self, params, batch):
    """Sum over target tokens of ``log p(target)``, weighted by ``decoder_loss_weights``."""
    self._check(batch, base.INPUT_KEYS + base.TARGET_KEYS)
    logits = self.compute_logits(params, batch)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_logp = jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    return (token_logp * batch["decoder_loss_weights"]).sum(axis=-1)

  # --- decoding -----------------------------------------------------------------------------
  def encode(self, params, batch):
    self._check(batch, base.INPUT_KEYS)
    return self.module.apply({"params": params}, batch["images"], batch["image_mask"],
                             batch["encoder_input_tokens"], method=PaliX.encode)

  def decoder_state(self, params, batch, max_decode_len):
    """Encoder outputs and the decode cache (cross-attention K/V computed once)."""
    encoded, mask = self.encode(params, batch)
    cache = self.module.apply({"params": params}, encoded, mask, max_decode_len,
                              method=PaliX.init_decode_cache)

    def tokens_to_logits(cache, tokens, step):
      return self.module.apply({"params": params}, cache, tokens, step,
                               method=PaliX.decode_step)

    return cache, tokens_to_logits

  def predict_batch_with_aux(self, params, batch, rng=None, *, decode_fn=None,
                             max_decode_len=None, max_new_tokens=None, **decode_kwargs):
    """Decodes the batch. Returns ``(tokens [B, L], {'logprobs': [B, L], 'lengths': [B], ...})``.

    ``max_decode_len`` (alias ``max_new_tokens``; default ``max_target_len``) is ``L``;
    ``decode_kwargs`` go to the decoding function (``min_new_tokens``, ``beam_size``, ...).
    Encoding and decoding run as one jit-compiled program (the only jit of the predict path: the
    decoders are pure), cached per decoding setup (``decode_fn``, ``L`` and the keyword
    arguments, which must be hashable).
    """
    self._check(batch, base.INPUT_KEYS)
    kwargs = {"eos_id": self.eos_id, **self.decode_kwargs, **decode_kwargs}
    length = decoding.decode_length(max_decode_len, max_new_tokens, self.max_target_len)
    setup = (decode_fn or self.decode_fn, int(length), tuple(sorted(kwargs.items())))
    if setup not in self._predict_fns:
      self._predict_fns[setup] = jax.jit(functools.partial(self._predict, setup))
    inputs = {k: batch[k] for k in base.INPUT_KEYS}
    return self._predict_fns[setup](params, inputs, rng)

  def _predict(self, setup, params, inputs, rng):
    decode_fn, max_decode_len, kwargs = setup
    kwargs = dict(kwargs)
    if rng is not None:
      kwargs["rng"] = rng
    cache, tokens_to_logits = self.decoder_state(params, inputs, max_decode_len)
    result = decode_fn(tokens_to_logits, cache, batch_size=inputs["encoder_input_tokens"].shape[0],
                       max_decode_len=max_decode_len, **kwargs)
    aux = {k: v for k, v in result._asdict().items() if k != "tokens"}
    return result.tokens, aux
