"""PaLI-X: ViT patch tokens, projected to the text width, prepended to the prompt in a T5/UL2 encoder.

Every image of an example (few-shot exemplars, video frames) goes through the ViT independently, so
``N`` images of ``k`` patches give ``N*k`` visual tokens. Images whose ``image_mask`` is 0 are masked
out of the encoder, and the encoder's relative positions count only real tokens, so masking an image
is the same as dropping it.

``PaliX`` is the Flax module; ``PaliXModel`` implements the model contract (``palix.models.base``).
"""

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from palix import decoding
from palix.layers import initializers as inits
from palix.layers.patch import patchify
from palix.layers.time_position import LearnedTimePosEmb
from palix.models import base
from palix.models import losses
from palix.models import packed_batch
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
    time_posemb: None: every image and video frame goes through the ViT alone (PaLI-X). A time
      embedding class (``palix.SinCosTimePosEmb`` or ``palix.LearnedTimePosEmb``,
      ``palix.layers.time_position``): the frames of a clip (``image_mask`` 2 after the 1 of its
      first frame) are one ViT sequence, attention across frames, and every visual token gets
      ``phi_t(t)`` (``t``: its image's index in the example) next to the ViT's ``phi_y + phi_x``,
      a factorized ``(t, y, x)`` embedding. Needs a packable ``ViTConfig.posemb`` (not
      ``LearnedPosEmb``).
  """
  vit: ViTConfig = gin.REQUIRED
  t5: T5Config = gin.REQUIRED
  max_images: int = 0
  freeze_vit: bool = False
  segment_separator_id: Optional[int] = None
  time_posemb: Any = None


def interleaved_order(image_mask, tokens, patches_per_image, separator_id: int, *, xp=jnp):
  """Permutation that interleaves image tokens and text segments in the encoder sequence.

  The encoder sequence starts as ``[image 0 patches, ..., image N-1 patches, text]``. The text is
  cut into segments, each ending with ``separator_id`` (the last one with EOS). With ``m``
  segments and ``n`` valid images, segment ``j`` is placed right after valid image ``n - m + j``
  (segments beyond the images go first). So a k-shot prompt
  ``ex_1 <sep> ... ex_k <sep> query`` with images ``[img_1 .. img_k, query_img]`` becomes
  ``img_1 ex_1 ... img_k ex_k query_img query``, and a single segment (the usual prompt) follows
  all images, as without interleaving. Masked images and padding go last; being masked they do not
  matter, and since positions count real tokens only, the result equals dropping them.

  ``patches_per_image`` is the token count of every image, or (packed examples, whose images have
  their own sizes) a sequence of one count per image. ``xp`` is the array namespace: ``jax.numpy``
  in the model, ``numpy`` where the data layer lays out a packed example
  (``palix.tasks.packed_palix``), so both place tokens by this one rule.

  Returns ``int32 [B, V + Le]`` (``V`` visual tokens): position ``i`` of the new sequence takes
  element ``order[i]`` of the old one.
  """
  b, n = image_mask.shape
  length = tokens.shape[1]
  counts = ([int(patches_per_image)] * n if isinstance(patches_per_image, (int, np.integer))
            else [int(c) for c in patches_per_image])
  token_image = np.repeat(np.arange(n), counts)  # the image of each visual token (static)
  num_visual = len(token_image)
  stride = num_visual + length  # room for all images and a whole text in each slot
  valid = image_mask > 0
  rank = xp.cumsum(valid, axis=1) - 1
  slot = xp.where(valid, rank, n + 1)
  image_keys = slot[:, token_image] * stride + xp.arange(num_visual)[None, :]
  real = tokens > 0
  ends = tokens == separator_id
  segment = xp.cumsum(ends, axis=1) - ends  # separators seen before this token
  num_segments = xp.max(xp.where(real, segment + 1, 0), axis=1, keepdims=True)
  follows = valid.sum(axis=1, keepdims=True) - num_segments + segment
  position = xp.arange(length)[None, :]
  text_keys = xp.where(real, follows * stride + num_visual + position,
                       (n + 2) * stride + position)
  keys = xp.concatenate([image_keys, text_keys], axis=1)
  return xp.argsort(keys, axis=1, stable=True).astype(xp.int32)


def image_groups(image_mask, xp=jnp):
  """ViT segment of each image slot ``[B, N]``: images with ``image_mask`` 1 start a segment,
  frames with 2 continue the segment of the image before them (a video clip), masked slots get
  0. A 2 in slot 0 starts a segment (nothing precedes it)."""
  first = xp.arange(image_mask.shape[1])[None, :] == 0
  starts = (image_mask == 1) | ((image_mask > 0) & first)
  return xp.where(image_mask > 0, xp.cumsum(starts, axis=1), 0)


class PaliX(nn.Module):
  """See the module docstring. Methods are used through ``module.apply(..., method=...)``."""
  config: PaliXConfig

  def setup(self):
    c = self.config
    vit_cfg = dataclasses.replace(c.vit.resolved(), pool=NoPool)
    self.vit_config = vit_cfg
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
    if c.time_posemb is not None:
      kw = {"param_dtype": vit_cfg.params_dtype} if c.time_posemb is LearnedTimePosEmb else {}
      self.time_posemb = c.time_posemb(width=vit_cfg.width, name="time_posemb", **kw)
    self.text = T5EncoderDecoder(t5, name="text")

  def _project(self, tokens, ts):
    """ViT tokens ``[B, L, Dv]`` -> text-width tokens, plus the frame embedding of ``ts``."""
    if self.config.freeze_vit:
      tokens = jax.lax.stop_gradient(tokens)
    tokens = self.projection(tokens)
    if self.config.max_images:
      frames = jnp.take(self.frame_embedding, ts, axis=0, mode="fill", fill_value=jnp.nan)
      tokens = tokens + frames.astype(tokens.dtype)
    return tokens

  def vit_packed(self, patches, image_ids, ys, xs, ts, grid_sizes, deterministic=True):
    """Packed ViT rows (``palix.models.packed_batch``) -> projected visual tokens ``[B, Lv, D]``."""
    added = self.time_posemb(ts) if self.config.time_posemb is not None else None
    _, out = self.vit.encode_packed(patches, image_ids, ys, xs, grid_sizes,
                                    train=not deterministic, added_embedding=added)
    return self._project(out["encoded"], ts)

  def embed_images(self, images, image_mask, deterministic=True):
    """``[B, N, H, W, 3]`` -> visual tokens ``[B, N*k, D]`` and their validity ``[B, N*k]``."""
    b, n, h, w, ch = images.shape
    c = self.config
    if c.max_images and n > c.max_images:
      raise ValueError(f"images has {n} images per example but PaliXConfig.max_images is "
                       f"{c.max_images}")
    if c.time_posemb is None:  # every image alone: the ViT's own square-image path
      _, out = self.vit(images.reshape(b * n, h, w, ch), train=not deterministic)
      k = out["encoded"].shape[1]
      ts = jnp.broadcast_to(jnp.repeat(jnp.arange(n), k), (b, n * k))
      tokens = self._project(out["encoded"].reshape(b, n * k, -1), ts)
    else:  # one ViT sequence per example: clips attend across frames (image_groups)
      patches, (gh, gw) = patchify(images.reshape(b * n, h, w, ch), self.vit_config.patch_size)
      k = gh * gw
      ys, xs = jnp.divmod(jnp.arange(k), gw)
      tile = lambda a: jnp.broadcast_to(jnp.tile(a, n), (b, n * k))
      image_ids = jnp.repeat(image_groups(image_mask), k, axis=1)
      grid_sizes = jnp.broadcast_to(jnp.array([gh, gw], jnp.int32), (b, n, 2))
      tokens = self.vit_packed(patches.reshape(b, n * k, -1), image_ids, tile(ys), tile(xs),
                               jnp.broadcast_to(jnp.repeat(jnp.arange(n), k), (b, n * k)),
                               grid_sizes, deterministic)
    valid = jnp.repeat(image_mask > 0, k, axis=1)
    return tokens, valid

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

  def encode_packed(self, packed, deterministic=True):
    """A packed batch's rows (``palix.models.packed_batch``) -> ``(encoded [B, Le, D],
    encoder_segment_ids [B, Le])``: the ViT rows, each visual token gathered into its place in
    the encoder row, and the encoder with attention inside each example."""
    visual = self.vit_packed(*(packed[k] for k in packed_batch.VISION_KEYS[:5]),
                             packed["grid_sizes"], deterministic)
    text = self.text.embed(packed["encoder_input_tokens"])
    index = packed["encoder_visual_index"]
    gathered = jnp.take_along_axis(visual, jnp.maximum(index, 0)[:, :, None], axis=1)
    embeds = jnp.where((index >= 0)[:, :, None], gathered.astype(text.dtype), text)
    segment_ids = packed["encoder_segment_ids"]
    encoded = self.text.encode(embeds, segment_ids > 0, positions=packed["encoder_positions"],
                               segment_ids=segment_ids, deterministic=deterministic)
    return encoded, segment_ids

  def decode(self, encoded, encoder_mask, decoder_input_tokens, deterministic=True):
    return self.text.decode(encoded, encoder_mask, decoder_input_tokens,
                            deterministic=deterministic)

  def packed_logits(self, packed, deterministic=True):
    """Teacher forcing on a packed batch: logits ``[B, Ld, V]``."""
    encoded, segment_ids = self.encode_packed(packed, deterministic)
    return self.text.decode(encoded, segment_ids > 0, packed["decoder_input_tokens"],
                            decoder_segment_ids=packed["decoder_segment_ids"],
                            decoder_positions=packed["decoder_positions"],
                            encoder_segment_ids=segment_ids, deterministic=deterministic)

  def init_decode_cache(self, encoded, encoder_mask, max_decode_len):
    return self.text.init_decode_cache(encoded, encoder_mask, max_decode_len)

  def decode_step(self, cache, tokens, step):
    return self.text.decode_step(cache, tokens, step)

  def __call__(self, images, image_mask, encoder_input_tokens, decoder_input_tokens,
               deterministic=True):
    encoded, mask = self.encode(images, image_mask, encoder_input_tokens, deterministic)
    return self.decode(encoded, mask, decoder_input_tokens, deterministic)


def packed_example_encodings(encoded, segment_ids, num_examples: int):
  """Packed encoder rows ``[B, Le, D]`` -> one row per example ``[B*S, Le, D]`` with the mask of
  its own segment ``[B*S, Le]`` (example ``(r, s)`` at ``r*S + s``): decoding runs one example
  per row against the encoder tokens of its segment only."""
  b, le, d = encoded.shape
  per_example = jnp.broadcast_to(encoded[:, None], (b, num_examples, le, d))
  own = segment_ids[:, None, :] == jnp.arange(1, num_examples + 1)[None, :, None]
  return per_example.reshape(b * num_examples, le, d), own.reshape(b * num_examples, le)


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
    if not input_shapes or packed_batch.is_packed(input_shapes):
      # The parameters do not depend on the batch geometry; a packed first batch inits them
      # through the square-image path, which creates the same ones.
      input_shapes, input_types = self.input_shapes(), None
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
    if packed_batch.is_packed(batch):
      packed_keys = packed_batch.INPUT_KEYS + (
          packed_batch.TARGET_KEYS if any(k in base.TARGET_KEYS for k in keys) else ())
      vit = self.config.vit.resolved()
      packed_batch.validate(batch, packed_keys, patch_pixels=vit.patch_size ** 2 * 3)
      return
    validate_batch(batch, keys, max_input_len=self.max_input_len)

  def _apply(self, params, method, *args, rng=None):
    rngs = {"dropout": rng} if rng is not None else None
    return self.module.apply({"params": params}, *args, deterministic=rng is None, rngs=rngs,
                             method=method)

  def compute_logits(self, params, batch, rng=None):
    """Teacher-forced logits ``[B, Ld, V]`` of a batch, one example per row or packed."""
    if packed_batch.is_packed(batch):
      self._check(batch, base.INPUT_KEYS + base.TARGET_KEYS)
      packed = {k: batch[k] for k in packed_batch.INPUT_KEYS + packed_batch.TARGET_KEYS}
      return self._apply(params, PaliX.packed_logits, packed, rng=rng)
    self._check(batch, _INPUT_KEYS)
    return self._apply(params, PaliX.__call__, *(batch[k] for k in _INPUT_KEYS), rng=rng)

  def _segments(self, batch):
    """``(segment_ids, num_segments)`` of packed targets, ``(None, None)`` for one per row."""
    if packed_batch.is_packed(batch):
      return batch["decoder_segment_ids"], batch["example_mask"].shape[1]
    return None, None

  def token_counts(self, batch):
    """Real tokens and token slots of each sequence the batch computes on (``num_vit_tokens``,
    ``num_vit_capacity``, and the same for ``encoder`` and ``decoder``): how much of a step's
    compute is padding. One example per row pays for every image slot (masked or not) and the
    whole ``inputs`` and ``targets`` lengths; a packed batch for its rows."""
    count = lambda x: jnp.sum(x).astype(jnp.float32)
    size = lambda x: jnp.asarray(x.size, jnp.float32)
    if packed_batch.is_packed(batch):
      vit, enc, dec = (batch[k] > 0 for k in ("image_ids", "encoder_segment_ids",
                                               "decoder_segment_ids"))
      return {"num_vit_tokens": count(vit), "num_vit_capacity": size(vit),
              "num_encoder_tokens": count(enc), "num_encoder_capacity": size(enc),
              "num_decoder_tokens": count(dec), "num_decoder_capacity": size(dec)}
    vit_cfg = self.config.vit.resolved()
    k = (batch["images"].shape[2] // vit_cfg.patch_size) * (batch["images"].shape[3]
                                                            // vit_cfg.patch_size)
    images, tokens = batch["image_mask"] > 0, batch["encoder_input_tokens"] > 0
    dec = batch["decoder_loss_weights"] > 0
    return {"num_vit_tokens": k * count(images), "num_vit_capacity": k * size(images),
            "num_encoder_tokens": k * count(images) + count(tokens),
            "num_encoder_capacity": k * size(images) + size(tokens),
            "num_decoder_tokens": count(dec), "num_decoder_capacity": size(dec)}

  def loss_fn(self, params, batch, rng):
    """Loss and metrics (``losses.weighted_cross_entropy_loss``; packed: each segment is a
    sequence) plus :meth:`token_counts`. A batch with ``task_ids`` (one per example: ``[B]``, or
    ``[B, S]`` packed) also gets per-example sums under ``per_example/`` (cross-entropy
    ``loss``, ``tokens`` and ``correct`` tokens), which the train step adds up per task."""
    self._check(batch, base.INPUT_KEYS + base.TARGET_KEYS)
    logits = self.compute_logits(params, batch, rng)
    segment_ids, num_segments = self._segments(batch)
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    loss, metrics = losses.weighted_cross_entropy_loss(
        logits, targets, weights, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        normalization=self.loss_normalization, ordinal_bins=self.ordinal_bins,
        segment_ids=segment_ids, num_segments=num_segments)
    metrics.update(self.token_counts(batch))
    if "task_ids" in batch:
      token_loss, token_z = losses.token_cross_entropy(
          logits, targets, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
          ordinal_bins=self.ordinal_bins)
      weights = weights.astype(jnp.float32)
      correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
      sums = lambda x: losses.example_sums(x * weights, segment_ids, num_segments)
      metrics.update({"per_example/loss": sums(token_loss - token_z),
                      "per_example/tokens": sums(jnp.ones_like(weights)),
                      "per_example/correct": sums(correct)})
    return loss, metrics

  def score_batch(self, params, batch):
    """Sum over target tokens of ``log p(target)``, weighted by ``decoder_loss_weights``:
    ``[B]``, or ``[B, S]`` for a packed batch (one per example slot)."""
    self._check(batch, base.INPUT_KEYS + base.TARGET_KEYS)
    logits = self.compute_logits(params, batch)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_logp = jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    return losses.example_sums(token_logp * batch["decoder_loss_weights"], *self._segments(batch))

  # --- decoding -----------------------------------------------------------------------------
  def encode(self, params, batch):
    """Encoder outputs and mask, one example per row (a packed batch's encoder rows are
    repeated per example slot, ``[B*S, Le, D]``, each masked to its own segment)."""
    self._check(batch, base.INPUT_KEYS)
    if packed_batch.is_packed(batch):
      packed = {k: batch[k] for k in packed_batch.INPUT_KEYS}
      encoded, segment_ids = self.module.apply({"params": params}, packed,
                                               method=PaliX.encode_packed)
      return packed_example_encodings(encoded, segment_ids, batch["example_mask"].shape[1])
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
    """Decodes the batch. Returns ``(tokens [B, L], {'logprobs': [B, L], 'lengths': [B], ...})``;
    a packed batch gives ``[B, S, L]`` (one answer per example slot; empty slots decode
    nothing useful, ``example_mask`` says which are real).

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
    keys = (packed_batch.INPUT_KEYS if packed_batch.is_packed(batch) else base.INPUT_KEYS)
    return self._predict_fns[setup](params, {k: batch[k] for k in keys}, rng)

  def _predict(self, setup, params, inputs, rng):
    decode_fn, max_decode_len, kwargs = setup
    kwargs = dict(kwargs)
    if rng is not None:
      kwargs["rng"] = rng
    cache, tokens_to_logits = self.decoder_state(params, inputs, max_decode_len)
    num_rows = jax.tree.leaves(cache)[0].shape[0]
    result = decode_fn(tokens_to_logits, cache, batch_size=num_rows,
                       max_decode_len=max_decode_len, **kwargs)
    aux = {k: v for k, v in result._asdict().items() if k != "tokens"}
    tokens = result.tokens
    if packed_batch.is_packed(inputs):  # [B*S, ...] -> [B, S, ...]
      b, slots = inputs["example_mask"].shape
      tokens, aux = jax.tree.map(lambda x: x.reshape((b, slots) + x.shape[1:]), (tokens, aux))
    return tokens, aux
