"""Pre-norm Transformer (Flax Linen): decoder-only (GPT; causal or prefix LM) or encoder-only (BERT,
with token types, the MLM output transform and the NSP head), with packed-segment masking and a KV cache.

Shape suffixes: B batch, L sequence length (the row; the queries), S key length (L, or the cache length
when decoding; the encoder length in cross-attention), D d_model, H heads, K head dim, F mlp_dim, V vocab,
P the learned position table (max_len); d and k are D/2 and K/2 (sin / cos frequencies).
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_STD = 0.02


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters; frozen so the module stays hashable (jit static args)."""
  vocab_size: int
  num_layers: int = 4
  d_model: int = 256
  num_heads: int = 4
  mlp_dim: int = 1024
  max_len: int = 128
  positions: str = "learned"  # learned | sinusoidal | rotary | relative (T5's bucketed bias)
  rope_base: float = 10000.0
  relative_buckets: int = 32  # relative: buckets of T5's relative position bias, and the distance
  relative_max_distance: int = 128  # beyond which all relative positions share the last bucket
  norm: str = "layernorm"  # layernorm | rmsnorm
  mlp_activation: str = "gelu"  # gelu | swiglu
  use_bias: bool = True
  tie_embeddings: bool = True
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0  # on the attention probabilities (BERT, GPT-2: 0.1)
  dtype: jnp.dtype = jnp.float32  # compute dtype; params are always float32
  scan_layers: bool = False
  remat: str = "none"  # none | full | dots
  attention: str = "auto"  # auto | explicit | fused (see _attend)
  # Derived from the model family and objective, not set in cfg.model directly:
  causal: bool = True  # False: bidirectional self-attention (encoder-only, BERT)
  num_token_types: int = 0  # > 0: token-type (sentence A / B) embeddings are added (BERT)
  mlm_head: bool = False  # BERT's output transform (dense, gelu, norm) before the tied projection, + bias
  nsp_head: bool = False  # also return next-sentence logits [B, 2] from the first token ([CLS])

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @classmethod
  def from_config(cls, model_cfg, vocab_size: int, max_len: int, **derived) -> "TransformerConfig":
    """Builds from the ml_collections `cfg.model` (see lmlab.config) plus the `derived` fields."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "max_len", "dtype"} - set(derived)
    kwargs = {name: model_cfg[name] for name in fields if name in model_cfg}
    return cls(vocab_size=vocab_size, max_len=max_len, dtype=jnp.dtype(model_cfg.dtype), **kwargs, **derived)


def _init(names, std=_STD):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _norm(cfg: TransformerConfig, name: str) -> nn.Module:
  scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",))
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=1e-6, dtype=cfg.dtype, scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=1e-6, dtype=cfg.dtype, use_bias=cfg.use_bias, scale_init=scale_init,
                      bias_init=_zeros(("embed",)), name=name)


def sinusoidal(positions_BL, d_model: int):
  """Fixed sin/cos position encodings [B, L, D] (Vaswani et al.), float32."""
  inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)
  angle_BLd = positions_BL[..., None].astype(jnp.float32) * inv_freq
  return jnp.concatenate([jnp.sin(angle_BLd), jnp.cos(angle_BLd)], axis=-1)[..., :d_model]


def rope_tables(positions_BL, head_dim: int, base: float):
  """(sin, cos) [B, L, 1, K/2] for rotary embeddings, computed once and shared by all layers."""
  inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2) / head_dim)
  angle_BLk = positions_BL[..., None].astype(jnp.float32) * inv_freq
  return jnp.sin(angle_BLk)[:, :, None, :], jnp.cos(angle_BLk)[:, :, None, :]


def apply_rope(x_BLHK, sin, cos):
  """Rotates the two halves of each head (GPT-NeoX layout); math in float32."""
  x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLHK.dtype)


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128):
  """T5's bucket of each relative position (key position - query position): exact buckets for the
  num_buckets / 2 nearest distances, logarithmically wider ones up to max_distance, the last bucket beyond;
  bidirectional: half of the buckets for keys after the query; causal: later keys share bucket 0."""
  n = -relative_position
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    bucket = (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  large = max_exact + (jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
                       / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  return bucket + jnp.where(n < max_exact, n, jnp.minimum(large, num_buckets - 1))


def relative_bias(module: nn.Module, cfg: TransformerConfig, query_positions_BL, key_positions_BS,
                  bidirectional: bool):
  """T5's relative position bias [B, H, L, S] (float32): one learned scalar per head and bucket, the
  module's `relative_bias` parameter, shared by all its layers and added to the self-attention logits."""
  table_RH = module.param("relative_bias", _init((None, "heads")), (cfg.relative_buckets, cfg.num_heads))
  bucket_BLS = relative_position_bucket(key_positions_BS[:, None, :] - query_positions_BL[:, :, None],
                                        bidirectional, cfg.relative_buckets, cfg.relative_max_distance)
  return jnp.transpose(table_RH[bucket_BLS], (0, 3, 1, 2)).astype(jnp.float32)


def segment_positions(segment_ids_BL):
  """Positions that restart at 0 at the start of every segment of a packed row."""
  idx_L = jnp.arange(segment_ids_BL.shape[1])
  prev_BL = jnp.pad(segment_ids_BL[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  start_BL = jnp.where(segment_ids_BL != prev_BL, idx_L, 0)
  return idx_L - jax.lax.cummax(start_BL, axis=1)


def attention_mask(length: int, segment_ids_BL=None, prefix_BL=None, causal: bool = True):
  """Boolean [B|1, 1, L, L]: query l may attend to key s.

  causal: s <= l, except that tokens of the prefix (prefix_BL != 0, prefix LM) see the whole prefix;
  bidirectional otherwise. Always within one segment when segment ids are given. Padding (segment 0)
  attends to padding, so no row is fully masked (no NaN).
  """
  if causal:
    mask_B1LL = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if prefix_BL is not None:
      prefix_BL = prefix_BL.astype(bool)
      mask_B1LL = mask_B1LL | (prefix_BL[:, None, :, None] & prefix_BL[:, None, None, :])
  else:
    mask_B1LL = jnp.ones((1, 1, length, length), bool)
  if segment_ids_BL is None:
    return mask_B1LL
  return mask_B1LL & (segment_ids_BL[:, None, :, None] == segment_ids_BL[:, None, None, :])


class Attention(nn.Module):
  """Multi-head self-attention with a fused QKV projection and an optional KV cache, for decoders (causal),
  encoders (bidirectional) and prefix LMs (bidirectional prefix, causal after it): the mask decides who
  attends to whom (see attention_mask); packed segments never see each other. bias_BHLS: T5's relative
  position bias, or None."""
  cfg: TransformerConfig
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD, mask_B1LS, rope, bias_BHLS, cache_index):
    cfg = self.cfg
    qkv_BL3HK = nn.DenseGeneral(
        (3, cfg.num_heads, cfg.head_dim), use_bias=cfg.use_bias, dtype=cfg.dtype,
        kernel_init=_init(("embed", None, "heads", "head_dim")),
        bias_init=_zeros((None, "heads", "head_dim")), name="qkv")(x_BLD)
    q_BLHK, k_BLHK, v_BLHK = (qkv_BL3HK[:, :, i] for i in range(3))
    if rope is not None:
      q_BLHK, k_BLHK = apply_rope(q_BLHK, *rope), apply_rope(k_BLHK, *rope)

    if self.decode:
      # The cache takes its shape from the init input; cache_index is None during that init.
      cached_k = self.variable("cache", "cached_key", jnp.zeros, k_BLHK.shape, k_BLHK.dtype)
      cached_v = self.variable("cache", "cached_value", jnp.zeros, v_BLHK.shape, v_BLHK.dtype)
      if cache_index is not None:
        start = (0, cache_index, 0, 0)
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BLHK, start)
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BLHK, start)
        k_BLHK, v_BLHK = cached_k.value, cached_v.value  # now k_BSHK, v_BSHK

    return _attend(cfg, q_BLHK, k_BLHK, v_BLHK, mask_B1LS, bias_BHLS, self.deterministic)


class CrossAttention(nn.Module):
  """Decoder-to-encoder attention (encoder-decoder models): queries from x, keys and values from the
  encoder output, with a fused KV projection; no position bias (as in T5)."""
  cfg: TransformerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD, encoded_BSD, mask_B1LS):
    cfg = self.cfg
    q_BLHK = nn.DenseGeneral(
        (cfg.num_heads, cfg.head_dim), use_bias=cfg.use_bias, dtype=cfg.dtype,
        kernel_init=_init(("embed", "heads", "head_dim")), bias_init=_zeros(("heads", "head_dim")),
        name="query")(x_BLD)
    kv_BS2HK = nn.DenseGeneral(
        (2, cfg.num_heads, cfg.head_dim), use_bias=cfg.use_bias, dtype=cfg.dtype,
        kernel_init=_init(("embed", None, "heads", "head_dim")),
        bias_init=_zeros((None, "heads", "head_dim")), name="kv")(encoded_BSD)
    return _attend(cfg, q_BLHK, kv_BS2HK[:, :, 0], kv_BS2HK[:, :, 1], mask_B1LS, None, self.deterministic)


def fused_implementation(cfg: TransformerConfig, q_BLHK, k_BSHK) -> str | None:
  """The jax.nn.dot_product_attention implementation for these inputs, or None for the explicit path:
  cuDNN's fused kernel on GPUs for bf16 / fp16 with head_dim a multiple of 8 up to 128 and even lengths
  (its constraints), XLA's otherwise."""
  use = cfg.attention if cfg.attention != "auto" else ("fused" if jax.default_backend() == "gpu" else "explicit")
  if use == "explicit":
    return None
  cudnn = (jax.default_backend() == "gpu" and jnp.dtype(cfg.dtype) in (jnp.bfloat16, jnp.float16)
           and cfg.head_dim % 8 == 0 and cfg.head_dim <= 128 and q_BLHK.shape[1] % 2 == 0
           and k_BSHK.shape[1] % 2 == 0)
  return "cudnn" if cudnn else "xla"


def _attend(cfg: TransformerConfig, q_BLHK, k_BSHK, v_BSHK, mask_B1LS, bias_BHLS, deterministic: bool):
  """Masked softmax attention (with attention dropout when training) and the output projection, inside
  the calling attention module. The mask (causal or prefix, and packed segments) and T5's bias reach the
  fused kernel as they are: cuDNN folds a boolean mask into its bias input."""
  dropout = cfg.attention_dropout_rate > 0 and not deterministic
  implementation = None if dropout else fused_implementation(cfg, q_BLHK, k_BSHK)
  if implementation is not None:
    bias = None if bias_BHLS is None else bias_BHLS.astype(q_BLHK.dtype if implementation == "cudnn" else jnp.float32)
    out_BLHK = jax.nn.dot_product_attention(q_BLHK, k_BSHK, v_BSHK, bias=bias, mask=mask_B1LS,
                                            implementation=implementation)
  else:
    # Scores and softmax in float32: bf16 logits lose too much precision for long contexts.
    logits_BHLS = jnp.einsum("blhk,bshk->bhls", q_BLHK, k_BSHK, preferred_element_type=jnp.float32)
    logits_BHLS = logits_BHLS / np.sqrt(cfg.head_dim)
    if bias_BHLS is not None:
      logits_BHLS = logits_BHLS + bias_BHLS
    logits_BHLS = jnp.where(mask_B1LS, logits_BHLS, jnp.finfo(jnp.float32).min)
    probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1)
    if dropout:
      probs_BHLS = nn.Dropout(cfg.attention_dropout_rate)(probs_BHLS, deterministic=False)
    probs_BHLS = probs_BHLS.astype(cfg.dtype)
    out_BLHK = jnp.einsum("bhls,bshk->blhk", probs_BHLS, v_BSHK)
  # Output projections get the GPT-2 scaled init so the residual stream variance stays O(1) with depth.
  return nn.DenseGeneral(
      cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias, dtype=cfg.dtype,
      kernel_init=_init(("heads", "head_dim", "embed"), _STD / math.sqrt(2 * cfg.num_layers)),
      bias_init=_zeros(("embed",)), name="out")(out_BLHK)


class Mlp(nn.Module):
  """GELU MLP or SwiGLU (Shazeer 2020)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BLD):
    cfg = self.cfg
    dense = lambda features, names, name, std=_STD: nn.Dense(
        features, use_bias=cfg.use_bias, dtype=cfg.dtype, kernel_init=_init(names, std),
        bias_init=_zeros(names[-1:]), name=name)
    if cfg.mlp_activation == "swiglu":
      h_BLF = nn.silu(dense(cfg.mlp_dim, ("embed", "mlp"), "wi_0")(x_BLD))
      h_BLF = h_BLF * dense(cfg.mlp_dim, ("embed", "mlp"), "wi_1")(x_BLD)
    else:
      h_BLF = nn.gelu(dense(cfg.mlp_dim, ("embed", "mlp"), "wi")(x_BLD))
    return dense(cfg.d_model, ("mlp", "embed"), "wo", _STD / math.sqrt(2 * cfg.num_layers))(h_BLF)


class Block(nn.Module):
  """Pre-norm residual block: self-attention, cross-attention to `encoded` when given (decoder of an
  encoder-decoder), MLP. Returns (x, None) so it can be the body of nn.scan."""
  cfg: TransformerConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BLD, mask_B1LS, rope, bias_BHLS, cache_index, encoded_BSD=None, cross_mask_B1LS=None):
    cfg = self.cfg
    h_BLD = Attention(cfg, self.decode, self.deterministic, name="attn")(
        _norm(cfg, "ln_attn")(x_BLD), mask_B1LS, rope, bias_BHLS, cache_index)
    x_BLD = x_BLD + self._dropout(h_BLD)
    if encoded_BSD is not None:
      h_BLD = CrossAttention(cfg, self.deterministic, name="cross")(
          _norm(cfg, "ln_cross")(x_BLD), encoded_BSD, cross_mask_B1LS)
      x_BLD = x_BLD + self._dropout(h_BLD)
    h_BLD = Mlp(cfg, name="mlp")(_norm(cfg, "ln_mlp")(x_BLD))
    return x_BLD + self._dropout(h_BLD), None

  def _dropout(self, x):
    # No op (and no 'dropout' rng needed) unless dropout is on and we are training.
    if self.cfg.dropout_rate > 0 and not self.deterministic:
      return nn.Dropout(self.cfg.dropout_rate)(x, deterministic=False)
    return x


_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}


class Transformer(nn.Module):
  """Returns float32 logits [B, L, V], and with nsp_head the next-sentence logits [B, 2] too."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens_BL, segment_ids_BL=None, positions_BL=None, *, prefix_BL=None,
               token_types_BL=None, deterministic=True, decode=False, features=False):
    """features=True returns the final hidden states [B, L, D] (after ln_final) instead of logits, for
    task heads; the output layers are then not run (nor created at init)."""
    cfg = self.config
    cache_index, positions_BL, key_positions_BS, mask_B1LS = self_attention_inputs(
        self, tokens_BL.shape, segment_ids_BL, positions_BL, prefix_BL, cfg.causal, decode)
    embed = token_embedding(cfg)
    x_BLD = embed(tokens_BL)
    if cfg.num_token_types:
      types = nn.Embed(cfg.num_token_types, cfg.d_model, dtype=cfg.dtype,
                       embedding_init=_init((None, "embed")), name="token_type_embed")
      x_BLD = x_BLD + types(jnp.zeros_like(tokens_BL) if token_types_BL is None else token_types_BL)
    x_BLD, rope = add_positions(self, cfg, x_BLD, positions_BL, deterministic)
    bias_BHLS = position_bias(self, cfg, positions_BL, key_positions_BS, cfg.causal)
    x_BLD = run_blocks(cfg, x_BLD, mask_B1LS, rope, bias_BHLS, cache_index, deterministic=deterministic,
                       decode=decode)
    x_BLD = _norm(cfg, "ln_final")(x_BLD)
    if features:
      return x_BLD
    h_BLD = x_BLD
    if cfg.mlm_head:
      h_BLD = nn.gelu(nn.Dense(cfg.d_model, dtype=cfg.dtype, kernel_init=_init(("embed", None)),
                               bias_init=_zeros((None,)), name="mlm_dense")(h_BLD))
      h_BLD = _norm(cfg, "mlm_norm")(h_BLD)

    logits_BLV = output_logits(self, cfg, embed, h_BLD)
    if cfg.mlm_head:
      logits_BLV = logits_BLV + self.param("output_bias", _zeros(("vocab",)), (cfg.vocab_size,))
    if not cfg.nsp_head:
      return logits_BLV
    # BERT's pooler: the final hidden state of the first token ([CLS]) through dense + tanh.
    pooled_BD = nn.tanh(nn.Dense(cfg.d_model, dtype=cfg.dtype, kernel_init=_init(("embed", None)),
                                 bias_init=_zeros((None,)), name="pooler")(x_BLD[:, 0]))
    nsp_B2 = nn.Dense(2, dtype=cfg.dtype, kernel_init=_init(("embed", None)), bias_init=_zeros((None,)),
                      name="nsp")(pooled_BD)
    return logits_BLV, nsp_B2.astype(jnp.float32)


# Pieces shared by the Transformer and the encoder-decoder (models/encdec.py); each is called from inside
# a module's compact __call__ and creates its parameters and submodules there.


def self_attention_inputs(module: nn.Module, shape, segment_ids_BL, positions_BL, prefix_BL, causal: bool,
                          decode: bool):
  """(cache_index, positions [B, L], key positions [B, S], self-attention mask [B|1, 1, L, S]), built
  once for all layers.

  Decoding (decode=True with a cache): the L queries sit at cache slots cache_index.., the keys are the
  cache slots up to each query, and the cache index advances by L. A row may start with left padding (a
  prompt shorter than the longest of its batch): the call that passes segment ids (0 on that padding)
  sets each row's offset, its padded slots are never attended to, and positions count from its first
  real token. prefix_BL marks queries and keys that see each other both ways (a prefix LM's prompt).
  decode=True without a cache initializes it (a causal pass over an unpacked row, whose length becomes
  the cache length).
  """
  B, L = shape
  if decode and module.has_variable("cache", "index"):
    index = module.variable("cache", "index", jnp.zeros, (), jnp.int32)
    offset = module.variable("cache", "offset", jnp.zeros, (B,), jnp.int32)
    cache_index = index.value
    index.value = cache_index + L
    if segment_ids_BL is not None:
      offset.value = jnp.argmax(segment_ids_BL > 0, axis=1).astype(jnp.int32)
    # The cache length is the init input's length; read it off any layer's cached keys [.., B, S, H, K].
    leaves = jax.tree_util.tree_leaves_with_path(module.variables["cache"])
    cache_len = next(x.shape[-3] for path, x in leaves if "cached_key" in jax.tree_util.keystr(path))
    slot_BL = jnp.broadcast_to(cache_index + jnp.arange(L), (B, L))
    key_slot_S = jnp.arange(cache_len)
    mask_BLS = (key_slot_S <= slot_BL[:, :, None]) & (key_slot_S >= offset.value[:, None, None])
    if prefix_BL is not None:
      key_prefix_BS = jax.lax.dynamic_update_slice(jnp.zeros((B, cache_len), bool), prefix_BL.astype(bool),
                                                   (0, cache_index))
      mask_BLS = mask_BLS | (prefix_BL.astype(bool)[:, :, None] & key_prefix_BS[:, None, :])
    positions_BL = jnp.maximum(slot_BL - offset.value[:, None], 0)
    key_positions_BS = jnp.maximum(key_slot_S - offset.value[:, None], 0)
    return cache_index, positions_BL, key_positions_BS, mask_BLS[:, None]
  if decode:
    module.variable("cache", "index", jnp.zeros, (), jnp.int32)
    module.variable("cache", "offset", jnp.zeros, (B,), jnp.int32)
    segment_ids_BL = positions_BL = prefix_BL = None
  mask_B1LS = attention_mask(L, segment_ids_BL, prefix_BL, causal)
  if positions_BL is None:
    positions_BL = (segment_positions(segment_ids_BL) if segment_ids_BL is not None
                    else jnp.broadcast_to(jnp.arange(L), (B, L)))
  return None, positions_BL, positions_BL, mask_B1LS


def token_embedding(cfg: TransformerConfig, name: str = "embed") -> nn.Embed:
  return nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, embedding_init=_init(("vocab", "embed")),
                  name=name)


def add_positions(module: nn.Module, cfg: TransformerConfig, x_BLD, positions_BL, deterministic: bool):
  """Adds learned or sinusoidal position encodings (then embedding dropout); returns (x, rope tables or
  None). A learned table is the module's `pos_embed` parameter."""
  rope = None
  if cfg.positions == "learned":
    table_PD = module.param("pos_embed", _init((None, "embed")), (cfg.max_len, cfg.d_model))
    x_BLD = x_BLD + table_PD[positions_BL].astype(cfg.dtype)
  elif cfg.positions == "sinusoidal":
    x_BLD = x_BLD + sinusoidal(positions_BL, cfg.d_model).astype(cfg.dtype)
  elif cfg.positions == "rotary":
    rope = rope_tables(positions_BL, cfg.head_dim, cfg.rope_base)
  if cfg.dropout_rate > 0 and not deterministic:
    x_BLD = nn.Dropout(cfg.dropout_rate)(x_BLD, deterministic=False)
  return x_BLD, rope


def position_bias(module: nn.Module, cfg: TransformerConfig, positions_BL, key_positions_BS, causal: bool):
  """The relative position bias [B, H, L, S] of cfg.positions = "relative" (see relative_bias), else None."""
  if cfg.positions != "relative":
    return None
  return relative_bias(module, cfg, positions_BL, key_positions_BS, bidirectional=not causal)


def run_blocks(cfg: TransformerConfig, x_BLD, mask_B1LS, rope, bias_BHLS, cache_index, *, deterministic: bool,
               decode: bool, encoded_BSD=None, cross_mask_B1LS=None, name: str = "block"):
  """num_layers Blocks named {name}_0.. (or one scanned `{name}s` with a leading layer axis)."""
  block = Block
  if cfg.remat != "none" and not decode:  # remat only matters for the backward pass
    block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
  args = (mask_B1LS, rope, bias_BHLS, cache_index, encoded_BSD, cross_mask_B1LS)
  if cfg.scan_layers:
    block = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                    split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * len(args),
                    length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    return block(cfg, deterministic, decode, name=f"{name}s")(x_BLD, *args)[0]
  for i in range(cfg.num_layers):
    x_BLD, _ = block(cfg, deterministic, decode, name=f"{name}_{i}")(x_BLD, *args)
  return x_BLD


def output_logits(module: nn.Module, cfg: TransformerConfig, embed: nn.Embed, h_BLD):
  """float32 logits [B, L, V] through the tied embedding or the module's `unembed` parameter."""
  if cfg.tie_embeddings:
    w_DV = embed.embedding.T
  else:
    w_DV = module.param("unembed", _init(("embed", "vocab")), (cfg.d_model, cfg.vocab_size))
  # Logits accumulate in float32 even when compute is bf16.
  return jnp.einsum("bld,dv->blv", h_BLD, w_DV.astype(cfg.dtype), preferred_element_type=jnp.float32)


def init_cache(model: "Transformer", batch_size: int, cache_len: int):
  """An empty KV cache (index 0) for decoding up to cache_len positions, without running the model."""
  tokens_BL = jax.ShapeDtypeStruct((batch_size, cache_len), jnp.int32)
  shapes = jax.eval_shape(lambda t: model.init(jax.random.key(0), t, decode=True)["cache"], tokens_BL)
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def param_count(params) -> int:
  """Number of scalars in a (possibly boxed, possibly layer-stacked) param tree."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.meta.unbox(params))))


def flops_per_token(cfg: TransformerConfig, seq_len: int, params) -> float:
  """Training FLOPs per token, forward + backward: 6 N + 12 num_layers d_model seq_len (PaLM, App. B).

  N counts the parameters that do matmuls: lookup tables (the input embedding, learned positions, token
  types) are left out, but the output projection counts, so a tied embedding counts once, as the output
  projection. The second term is attention scores and the weighted sum of values (no causal discount).
  """
  n = param_count(params)
  if not cfg.tie_embeddings:
    n -= cfg.vocab_size * cfg.d_model
  if cfg.positions == "learned":
    n -= cfg.max_len * cfg.d_model
  n -= cfg.num_token_types * cfg.d_model
  return float(6 * n + 12 * cfg.num_layers * cfg.d_model * seq_len)
