"""AdaTape (Xue et al. 2023; papers.md §2.9): elastic input sequences read from a tape bank.

An *Adaptive Tape Reader* (ATR) appends up to ``max_tape_tokens`` tape tokens to a sequence of
tokens ``[B, L, D]``. Each tape token is a softmax-weighted sum of ``top_k`` entries of a *tape
bank*; the reader halts per example once its accumulated halting probability reaches
``threshold``, so example ``b`` uses its own number ``n_b`` (1 <= n_b <= max_tape_tokens) of tape
tokens. The remaining slots get segment id 0, so the existing attention masks
(``palix.layers.masks.segment_mask``) and the padding-aware pooling heads ignore them: the
sequence an example sees is ``L + n_b`` tokens long.

Reader step ``t`` (``read_tape``), for every example still running (halting probability
``h < threshold``); ``q`` and the bank share one LayerNorm and only the first ``key_features``
features of each serve as query/key:

1. ``scores = q . key_j`` over the bank entries this example has not used yet;
2. the ``top_k`` of them, ``w = softmax(scores / sqrt(key_features))`` (sorted, ``w_1`` largest);
3. tape token ``t = sum_j w_j entry_j`` (the full LayerNorm'd entries);
4. ``ponder += cost(w)`` (``entropy_ponder_cost``: ``1 - sum w^2``; ``max_ponder_cost``:
   ``1 - max w``) and ``h += w_1``; the example halts at the first step with ``h >= threshold``
   (that step's token is still used);
5. its entries are marked used (never selected again) and ``q`` becomes ``(q + key(token)) / 2``
   (or ``key(token)`` with ``average_query_update=False``).

What is skipped at run time: the steps run in a ``lax.scan`` of ``max_tape_tokens`` steps whose
body is a ``lax.cond``; once every example of the batch has halted, the remaining steps take the
branch that only passes the state through (under ``jit`` only the taken branch executes, in the
forward and the backward pass). A ``lax.while_loop`` would stop outright but cannot be
differentiated in reverse mode. Not skipped: the transformer blocks after the tape always process
all ``max_tape_tokens`` slots (static shapes); the hidden slots cost the same FLOPs as visible
ones, so the per-example ``n_b`` measures the compute an example *needs*, not wall time saved.

Options are gin-selected through ``AdaTapeConfig`` (``ViTConfig.adatape = @AdaTapeConfig()``):
the bank (``adatape.LearnedTapeBank`` or ``adatape.InputTapeBank``), the query (``vit.GlobalAveragePool``
or ``adatape.ClassTokenQuery``), the ponder cost, sizes, and the block the tape goes before.
Integer ``top_k`` (the reference computes it by float floor division; not reproduced).
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from palix.layers import initializers as inits
from palix.layers.norms import LayerNorm
from palix.layers.patch import patchify
from palix.layers.pooling import GlobalAveragePool


def entropy_ponder_cost(weights):
  """``1 - sum_j w_j^2`` per example (the reference's 'entropy'): 0 for a one-hot choice."""
  return 1.0 - jnp.sum(jnp.square(weights), axis=-1)


def max_ponder_cost(weights):
  """``1 - max_j w_j`` per example (the reference's 'max'): 0 for a one-hot choice."""
  return 1.0 - jnp.max(weights, axis=-1)


class ClassTokenQuery(nn.Module):
  """The tape query is the class token (``tokens[:, 0]``; needs ``ViTConfig.class_token``)."""

  def __call__(self, tokens, valid, deterministic=True):
    return tokens[:, 0]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AdaTapeConfig:
  """Everything that shapes the tape. Bind as ``ViTConfig.adatape = @AdaTapeConfig()``.

  Attributes:
    bank: ``InputTapeBank`` (default; entries derived from the input) or ``LearnedTapeBank``.
    bank_size: entries of a ``LearnedTapeBank``.
    bank_patch_size: patch size of an ``InputTapeBank`` over images (finer than the ViT's).
    max_tape_tokens: reader steps, one tape token each (the most an example can use).
    top_k: bank entries merged into each tape token.
    threshold: halting threshold on the accumulated probability (> 0; the reference's 2.0 is
      called ``act_epsilon`` there). Each step adds the largest weight, in ``[1/top_k, 1]``.
    ponder_cost: ``entropy_ponder_cost`` or ``max_ponder_cost``.
    ponder_loss_weight: weight of the mean ponder cost in the model's loss.
    query: a pooling head ``(tokens, valid) -> [B, D]``: ``GlobalAveragePool`` (default) or
      ``ClassTokenQuery``.
    key_features: leading features used as query and key (None: ``width // num_heads``, as the
      reference's ``split_tt = num_heads``).
    average_query_update: ``q <- (q + key(token)) / 2``; False: ``q <- key(token)``.
    tape_layer: the tape is appended before this block (0: at the input).
  """
  bank: Any = None
  bank_size: int = 1000
  bank_patch_size: int = 8
  max_tape_tokens: int = 10
  top_k: int = 5
  threshold: float = 2.0
  ponder_cost: Callable = entropy_ponder_cost
  ponder_loss_weight: float = 0.01
  query: Any = None
  key_features: Optional[int] = None
  average_query_update: bool = True
  tape_layer: int = 0

  def resolved(self, *, depth: int, width: int, num_heads: int, num_bank_inputs: int,
               class_token: bool, owner: str) -> "AdaTapeConfig":
    """Defaults filled in and every option checked; errors name the gin binding.

    ``num_bank_inputs``: how many items an ``InputTapeBank`` gets per example (patches of
    ``bank_patch_size``, sequence positions); ``owner``: the binding that holds this config.
    """
    c = dataclasses.replace(self, bank=self.bank or InputTapeBank,
                            query=self.query or GlobalAveragePool,
                            key_features=self.key_features or width // num_heads)
    where = f"(bound as {owner})"
    for name in ("max_tape_tokens", "top_k", "bank_size", "bank_patch_size", "key_features"):
      value = getattr(c, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"AdaTapeConfig.{name} = {value!r} {where}: must be a positive integer")
    if not c.threshold > 0:
      raise ValueError(f"AdaTapeConfig.threshold = {c.threshold!r} {where}: the halting "
                       "threshold must be > 0 (each step adds a probability in (0, 1])")
    if c.ponder_loss_weight < 0:
      raise ValueError(f"AdaTapeConfig.ponder_loss_weight = {c.ponder_loss_weight!r} {where}: "
                       "must be >= 0")
    if not 0 <= c.tape_layer < depth:
      raise ValueError(f"AdaTapeConfig.tape_layer = {c.tape_layer!r} {where} is outside the "
                       f"depth: the tape goes before one of blocks 0..{depth - 1} (depth {depth})")
    if c.key_features > width:
      raise ValueError(f"AdaTapeConfig.key_features = {c.key_features} {where} exceeds the "
                       f"width {width}")
    if c.query is ClassTokenQuery and not class_token:
      raise ValueError(f"AdaTapeConfig.query = ClassTokenQuery {where} needs a class token "
                       "(set ViTConfig.class_token = True)")
    if c.bank not in (InputTapeBank, LearnedTapeBank):
      raise ValueError(f"AdaTapeConfig.bank = {c.bank!r} {where}: expected "
                       "adatape.InputTapeBank or adatape.LearnedTapeBank")
    entries = c.bank_size if c.bank is LearnedTapeBank else num_bank_inputs
    source = ("AdaTapeConfig.bank_size" if c.bank is LearnedTapeBank else
              f"InputTapeBank over {num_bank_inputs} input items")
    if c.max_tape_tokens * c.top_k > entries:
      raise ValueError(
          f"AdaTapeConfig.max_tape_tokens * AdaTapeConfig.top_k = {c.max_tape_tokens} x "
          f"{c.top_k} {where}: the reader may need {c.max_tape_tokens * c.top_k} distinct bank "
          f"entries but the bank has {entries} ({source}); lower one of them")
    return c

  def for_vit(self, vit) -> "AdaTapeConfig":
    """``resolved`` for a ``ViTConfig`` (its bank inputs: patches of ``bank_patch_size``)."""
    owner = "ViTConfig.adatape"
    if (self.bank or InputTapeBank) is InputTapeBank and vit.image_size % self.bank_patch_size:
      raise ValueError(f"AdaTapeConfig.bank_patch_size = {self.bank_patch_size} (bound as "
                       f"{owner}) does not divide ViTConfig.image_size = {vit.image_size}")
    return self.resolved(depth=vit.depth, width=vit.width, num_heads=vit.num_heads,
                         num_bank_inputs=(vit.image_size // self.bank_patch_size) ** 2,
                         class_token=vit.class_token, owner=owner)


class LearnedTapeBank(nn.Module):
  """A learned table of ``bank_size`` entries (truncated normal, std 0.02): ``[1, N, D]``."""
  config: AdaTapeConfig
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs):
    del inputs  # the same bank for every example
    init = nn.initializers.truncated_normal(0.02)
    table = self.param("entries", nn.with_logical_partitioning(init, ("length", "embed")),
                       (self.config.bank_size, self.width), self.param_dtype)
    return table.astype(self.dtype)[None]


class InputTapeBank(nn.Module):
  """Entries derived from the input: ``[B, N, D]``.

  Images ``[B, H, W, C]`` are cut into patches of ``bank_patch_size`` (a second patch embedding,
  finer than the ViT's); sequences ``[B, N, F]`` (e.g. one-hot tokens) are used per position. Each
  item gets a linear embedding, its own learned position embedding and a projection
  (``pre_bank``), as in the reference.
  """
  config: AdaTapeConfig
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs):
    if inputs.ndim == 4:
      inputs, _ = patchify(inputs, self.config.bank_patch_size)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Dense(self.width, kernel_init=nn.with_logical_partitioning(inits.lecun_normal,
                                                                      ("patch", "embed")),
                 bias_init=nn.with_logical_partitioning(inits.zeros, ("embed",)),
                 name="embedding", **kw)(inputs.astype(self.dtype))
    posemb = self.param("pos_embedding", nn.with_logical_partitioning(inits.normal(0.02),
                                                                      ("length", "embed")),
                        x.shape[1:], self.param_dtype)
    x = x + posemb.astype(self.dtype)
    # A width x width projection: its output axis takes the "mlp" name so that the two axes map
    # to different mesh axes.
    return nn.Dense(self.width, kernel_init=nn.with_logical_partitioning(inits.lecun_normal,
                                                                         ("embed", "mlp")),
                    bias_init=nn.with_logical_partitioning(inits.zeros, ("mlp",)),
                    name="pre_bank", **kw)(x)


class TapeRead(NamedTuple):
  """What ``read_tape`` returns (``T = max_tape_tokens``)."""
  tokens: jax.Array  # [B, T, D]; slot t of example b is zeros when t >= num_tokens[b]
  num_tokens: jax.Array  # [B] int32, steps taken (tape tokens used), in 1..T
  ponder: jax.Array  # [B] accumulated ponder cost of the steps taken
  halting: jax.Array  # [B] accumulated halting probability (>= threshold once halted)
  indices: jax.Array  # [B, T, top_k] int32 bank entries read at each step, -1 after halting


def read_tape(query, entries, config: AdaTapeConfig) -> TapeRead:
  """The ATR loop (see the module docstring) on LayerNorm'd ``query [B, K]`` and ``entries [B, N,
  D]``; keys are ``entries[..., :K]``. Pure JAX, float32."""
  query, entries = query.astype(jnp.float32), entries.astype(jnp.float32)
  b, n, d = entries.shape
  k_feat = query.shape[-1]
  keys = entries[..., :k_feat]
  steps, top_k, threshold = config.max_tape_tokens, config.top_k, config.threshold
  skipped = (jnp.zeros((b, d), jnp.float32), jnp.full((b, top_k), -1, jnp.int32))

  def take(state):
    q, halting, ponder, count, used = state
    running = halting < threshold
    scores = jnp.einsum("bk,bnk->bn", q, keys)
    _, index = jax.lax.top_k(jnp.where(used, -jnp.inf, scores), top_k)
    weights = jax.nn.softmax(jnp.take_along_axis(scores, index, axis=1) / math.sqrt(k_feat), -1)
    token = jnp.einsum("bj,bjd->bd", weights, jnp.take_along_axis(entries, index[..., None], 1))
    ponder = ponder + jnp.where(running, config.ponder_cost(weights), 0.0)
    halting = jnp.where(running, halting + weights[:, 0], halting)
    count = count + running.astype(jnp.int32)
    used = used | (jnp.any(jax.nn.one_hot(index, n, dtype=jnp.bool_), axis=1)
                   & running[:, None])
    token_key = token[:, :k_feat]
    new_q = (q + token_key) / 2 if config.average_query_update else token_key
    q = jnp.where(running[:, None], new_q, q)
    outputs = (token * running[:, None], jnp.where(running[:, None], index, -1))
    return (q, halting, ponder, count, used), outputs

  def step(state, _):
    return jax.lax.cond(jnp.all(state[1] >= threshold), lambda s: (s, skipped), take, state)

  init = (query, jnp.zeros((b,), jnp.float32), jnp.zeros((b,), jnp.float32),
          jnp.zeros((b,), jnp.int32), jnp.zeros((b, n), jnp.bool_))
  (_, halting, ponder, count, _), (tokens, indices) = jax.lax.scan(step, init, None, length=steps)
  return TapeRead(tokens=jnp.swapaxes(tokens, 0, 1), num_tokens=count, ponder=ponder,
                  halting=halting, indices=jnp.swapaxes(indices, 0, 1))


class AdaTape(nn.Module):
  """Bank + shared LayerNorm + reader: ``(tokens, segment_ids, bank_input) -> (tokens', ids',
  read)`` with ``max_tape_tokens`` slots appended; slot ``t`` has the example's segment id when
  ``t < read.num_tokens`` and 0 otherwise. ``config`` must be resolved.

  One example per row: the tape of a row takes the row's largest segment id (the tape does not
  support several packed examples per row).
  """
  config: AdaTapeConfig
  width: int
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, segment_ids, bank_input, deterministic=True):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bank = c.bank(config=c, width=self.width, name="bank", **kw)(bank_input)
    norm = LayerNorm(epsilon=self.layer_norm_eps, name="bank_norm", **kw)
    query = c.query(name="query")(tokens, segment_ids > 0, deterministic)
    query = norm(query)[..., :c.key_features]
    entries = jnp.broadcast_to(norm(bank), (tokens.shape[0],) + bank.shape[1:])
    read = read_tape(query, entries, c)
    visible = jnp.arange(c.max_tape_tokens)[None, :] < read.num_tokens[:, None]
    tape_ids = jnp.where(visible, jnp.max(segment_ids, axis=1, keepdims=True), 0)
    x = jnp.concatenate([tokens, read.tokens.astype(tokens.dtype)], axis=1)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, jnp.concatenate([segment_ids, tape_ids.astype(segment_ids.dtype)], axis=1), read


def ponder_loss_and_metrics(out, config: AdaTapeConfig, weights=None):
  """``(weighted mean ponder cost, metrics)`` for a model's ``loss_fn``, from the encoder's
  ``out`` (``tape_tokens_used``, ``ponder_cost``): the loss term, and the tape tokens used per
  example (mean, min, max over the batch) for the trainer to log. ``weights [B]`` (e.g. an image
  mask) leave padding rows out."""
  used = out["tape_tokens_used"].astype(jnp.float32)
  real = jnp.ones_like(used) if weights is None else jnp.asarray(weights, jnp.float32)
  count = jnp.maximum(real.sum(), 1.0)
  ponder = jnp.sum(out["ponder_cost"] * real) / count
  metrics = {"ponder_cost": ponder, "tape_tokens_mean": jnp.sum(used * real) / count,
             "tape_tokens_min": jnp.min(jnp.where(real > 0, used, jnp.inf)),
             "tape_tokens_max": jnp.max(jnp.where(real > 0, used, -jnp.inf))}
  return config.ponder_loss_weight * ponder, metrics


for _obj in (LearnedTapeBank, InputTapeBank, ClassTokenQuery, entropy_ponder_cost,
             max_ponder_cost):
  gin.constant(f"adatape.{_obj.__name__}", _obj)
