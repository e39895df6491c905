"""Multi-layer LSTM / GRU language models (Flax Linen) that reset their state at every packed segment.

Same call signature and float32 logits as models.transformer.Transformer, so the trainer can use either.
bidirectional=False is a causal LM; bidirectional=True (for masked LM) runs a forward and a backward
scan per layer and projects their concatenation back to d_model.

Shape suffixes: B batch, L length, D d_model (embedding width = hidden width), V vocab.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmlab.models.transformer import param_count

# Gate kernels read a d_model-wide input ("embed", split over fsdp) and write gate units ("mlp", split
# over tensor), whether the input is x_t or the previous hidden state; the two names map to different
# mesh axes, and two named axes make the optimizer's decay_mask give them weight decay.
_KERNEL = ("embed", "mlp")


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
  """Hyperparameters; frozen so the module stays hashable (jit static args)."""
  vocab_size: int
  cell: str = "lstm"  # lstm | gru
  num_layers: int = 2
  d_model: int = 256  # embedding width = hidden width of every layer
  dropout_rate: float = 0.0  # on the embeddings and on every layer's output
  tie_embeddings: bool = True
  bidirectional: bool = False  # True: each position sees its whole segment (masked LM only)
  dtype: jnp.dtype = jnp.float32  # compute dtype; params and the recurrent state are float32
  forget_bias: float = 1.0  # initial LSTM forget-gate bias

  @classmethod
  def from_config(cls, model_cfg, vocab_size: int, max_len: int | None = None,
                  **derived) -> "RecurrentConfig":
    """Builds from the ml_collections `cfg.model` (rnn_cell plus the shared keys) and `derived` fields.

    `derived` (e.g. bidirectional=objective == "mlm") overrides cfg.model; bidirectional is read from
    cfg.model only if it has that key. max_len matches TransformerConfig.from_config's call and is
    ignored: a recurrent model has no length limit.
    """
    del max_len
    kwargs = dict(cell=model_cfg.rnn_cell, num_layers=model_cfg.num_layers, d_model=model_cfg.d_model,
                  dropout_rate=model_cfg.dropout_rate, tie_embeddings=model_cfg.tie_embeddings,
                  dtype=jnp.dtype(model_cfg.dtype))
    if "bidirectional" in model_cfg:
      kwargs["bidirectional"] = model_cfg.bidirectional
    return cls(vocab_size=vocab_size, **{**kwargs, **derived})


def segment_starts(segment_ids_BL):
  """True where a segment begins: position 0 and wherever the id differs from the previous one."""
  prev_BL = jnp.pad(segment_ids_BL[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  return segment_ids_BL != prev_BL


def segment_ends(segment_ids_BL):
  """True where a segment ends: the last position and wherever the id differs from the next one."""
  next_BL = jnp.pad(segment_ids_BL[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
  return segment_ids_BL != next_BL


def _gate_bias(cell: str, forget_bias: float):
  """Zero gate biases, except the LSTM forget gate's (Jozefowicz et al. 2015: 1, so that the cell keeps
  its state by default early in training). Gates are laid out [i | f | g | o] for the LSTM."""
  def init(key, shape, dtype=jnp.float32):
    del key
    bias = jnp.zeros(shape, dtype)
    if cell == "lstm":
      width = shape[-1] // 4
      bias = bias.at[width:2 * width].set(forget_bias)
    return bias
  return init


def _orthogonal_blocks(num_gates: int):
  """An orthogonal [D, D] block per gate, side by side: [D, num_gates * D] (each gate's recurrence
  starts norm-preserving, as flax's per-gate cells initialize it)."""
  def init(key, shape, dtype=jnp.float32):
    width = shape[-1] // num_gates
    blocks = [nn.initializers.orthogonal()(k, (shape[0], width), dtype) for k in jax.random.split(key, num_gates)]
    return jnp.concatenate(blocks, axis=-1)
  return init


class RecurrentStep(nn.Module):
  """One time step of the recurrence, the body of an nn.scan over time: (carry, (xg_BG, reset_B)) ->
  (carry, h_BD). xg_BG is the input's share of every gate, computed for all steps before the scan; the
  step adds the recurrent share h @ U and applies the gates. The carry is zeroed first where reset_B.

  LSTM: i, f, g, o = split(xg + h U); c' = s(f) c + s(i) tanh(g); h' = s(o) tanh(c').
  GRU (PyTorch / cuDNN form): r, z, n from xg; r = s(xr + h Ur + br), z = s(xz + h Uz + bz),
  n = tanh(xn + r (h Un + bn)); h' = (1 - z) n + z h.
  """
  cfg: "RecurrentConfig"

  @nn.compact
  def __call__(self, carry, inputs):
    cfg = self.cfg
    xg_BG, reset_B = inputs
    # Zero state = the state a fresh sequence starts from, so no information crosses documents.
    carry = jax.tree_util.tree_map(lambda c: jnp.where(reset_B[:, None], jnp.zeros_like(c), c), carry)
    h_BD = carry[1] if cfg.cell == "lstm" else carry
    num_gates = xg_BG.shape[-1] // cfg.d_model
    hg_BG = nn.Dense(num_gates * cfg.d_model, use_bias=cfg.cell == "gru", dtype=cfg.dtype,
                     kernel_init=nn.with_logical_partitioning(_orthogonal_blocks(num_gates), _KERNEL),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
                     name="recurrent")(h_BD.astype(cfg.dtype))
    xg_BG, hg_BG = xg_BG.astype(jnp.float32), hg_BG.astype(jnp.float32)
    if cfg.cell == "lstm":
      i_BD, f_BD, g_BD, o_BD = jnp.split(xg_BG + hg_BG, 4, axis=-1)
      c_BD = nn.sigmoid(f_BD) * carry[0] + nn.sigmoid(i_BD) * jnp.tanh(g_BD)
      h_BD = nn.sigmoid(o_BD) * jnp.tanh(c_BD)
      return (c_BD, h_BD), h_BD
    xr_BD, xz_BD, xn_BD = jnp.split(xg_BG, 3, axis=-1)
    hr_BD, hz_BD, hn_BD = jnp.split(hg_BG, 3, axis=-1)
    r_BD, z_BD = nn.sigmoid(xr_BD + hr_BD), nn.sigmoid(xz_BD + hz_BD)
    n_BD = jnp.tanh(xn_BD + r_BD * hn_BD)
    h_BD = (1.0 - z_BD) * n_BD + z_BD * h_BD
    return h_BD, h_BD


def initial_carry(cfg: "RecurrentConfig", batch_size: int):
  # float32 even for bf16 compute: the state accumulates over the whole sequence.
  h_BD = jnp.zeros((batch_size, cfg.d_model), jnp.float32)
  return (h_BD, h_BD) if cfg.cell == "lstm" else h_BD  # LSTM carry is (c, h)


# Params are shared by all time steps (broadcast); time is axis 1 of the gate inputs and reset_BL.
_Scan = nn.scan(RecurrentStep, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
_ReverseScan = nn.scan(RecurrentStep, variable_broadcast="params", split_rngs={"params": False}, in_axes=1,
                       out_axes=1, reverse=True)


class Direction(nn.Module):
  """One direction of a recurrent layer over [B, L, D]: the input share of every gate for all positions
  in one [B L, D] x [D, G D] matmul (outside the scan, where it runs as one large matmul instead of L
  small ones), then the scan over time from `carry` (default: the zero state). Returns the hidden states
  [B, L, D] in float32 and the final carry."""
  cfg: "RecurrentConfig"
  reverse: bool = False

  @nn.compact
  def __call__(self, x_BLD, reset_BL, carry=None):
    cfg = self.cfg
    num_gates = 4 if cfg.cell == "lstm" else 3
    xg_BLG = nn.Dense(num_gates * cfg.d_model, dtype=cfg.dtype,
                      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), _KERNEL),
                      bias_init=nn.with_logical_partitioning(_gate_bias(cfg.cell, cfg.forget_bias), ("mlp",)),
                      name="input")(x_BLD)
    scan = (_ReverseScan if self.reverse else _Scan)(cfg, name="step")
    if carry is None:
      carry = initial_carry(cfg, x_BLD.shape[0])
    carry, h_BLD = scan(carry, (xg_BLG, reset_BL))
    return h_BLD, carry


class RecurrentLayer(nn.Module):
  """One recurrent layer over [B, L, D]; bidirectional: forward and backward scans, concat, project.
  Returns the outputs and (unidirectional) the final carry; given a `carry` (decoding: the state after
  the tokens before), the scan continues from it without resetting at position 0."""
  cfg: RecurrentConfig

  @nn.compact
  def __call__(self, x_BLD, segment_ids_BL, carry=None):
    cfg = self.cfg
    reset_BL = segment_starts(segment_ids_BL)
    if carry is not None:
      reset_BL = reset_BL.at[:, 0].set(False)
    h_BLD, carry = Direction(cfg, name="fwd")(x_BLD, reset_BL, carry)
    if not cfg.bidirectional:
      return h_BLD.astype(cfg.dtype), carry
    # Reversed scan: starts at the last position and resets at every segment end, so padding (after
    # the last segment) and later segments never reach earlier positions.
    g_BLD, _ = Direction(cfg, reverse=True, name="bwd")(x_BLD, segment_ends(segment_ids_BL))
    # Concat + project (not a sum): the directions keep separate features and the next layer (and a
    # tied output projection) still sees d_model wide inputs; costs 2 D^2 params per layer.
    hg_BL2D = jnp.concatenate([h_BLD, g_BLD], axis=-1).astype(cfg.dtype)
    out_BLD = nn.Dense(cfg.d_model, dtype=cfg.dtype,
                       kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                ("mlp", "embed")),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
                       name="combine")(hg_BL2D)
    return out_BLD, None


class RecurrentLM(nn.Module):
  """Embedding -> dropout -> num_layers x (recurrent layer -> dropout) -> output projection (float32)."""
  config: RecurrentConfig

  @nn.compact
  def __call__(self, tokens_BL, segment_ids_BL=None, positions_BL=None, *, deterministic=True,
               features=False, carries=None, return_carries=False):
    """features=True returns the last layer's hidden states [B, L, D] instead of logits (task heads).
    Decoding (unidirectional): return_carries=True also returns every layer's final carry, and `carries`
    (those of the tokens before) continues from them, so each new token costs one step."""
    del positions_BL  # order comes from the recurrence; accepted to match the Transformer's signature
    cfg = self.config
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones_like(tokens_BL)  # one segment per row: reset only at the row edges
    if (carries is not None or return_carries) and cfg.bidirectional:
      raise ValueError("A bidirectional recurrent model reads the whole row: it has no decoding state.")
    # std d_model^-1/2: inputs of O(1/sqrt(D)) per unit, and tied logits of O(1) at init.
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype,
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(cfg.d_model ** -0.5), ("vocab", "embed")),
                     name="embed")
    x_BLD = self._dropout(embed(tokens_BL), deterministic)
    new_carries = []
    for i in range(cfg.num_layers):
      x_BLD, carry = RecurrentLayer(cfg, name=f"layer_{i}")(x_BLD, segment_ids_BL,
                                                           None if carries is None else carries[i])
      x_BLD = self._dropout(x_BLD, deterministic)
      new_carries.append(carry)
    if features:
      return x_BLD

    # Logits accumulate in float32 even when compute is bf16.
    if cfg.tie_embeddings:
      w_DV = embed.embedding.T
    else:
      w_DV = self.param("unembed", nn.with_logical_partitioning(
          nn.initializers.normal(cfg.d_model ** -0.5), ("embed", "vocab")), (cfg.d_model, cfg.vocab_size))
    logits_BLV = jnp.einsum("bld,dv->blv", x_BLD, w_DV.astype(cfg.dtype), preferred_element_type=jnp.float32)
    return (logits_BLV, tuple(new_carries)) if return_carries else logits_BLV

  def _dropout(self, x, deterministic):
    # No op (and no 'dropout' rng needed) unless dropout is on and we are training.
    if self.config.dropout_rate > 0 and not deterministic:
      return nn.Dropout(self.config.dropout_rate)(x, deterministic=False)
    return x


def flops_per_token(cfg: RecurrentConfig, params) -> float:
  """Training FLOPs per token, forward + backward: 6 N, N the parameters that do matmuls.

  Every gate kernel, recurrent kernel and combine projection is applied once per token (per
  direction), so 2 N forward and 4 N backward is exact for the matmuls; gate nonlinearities are
  left out. As in transformer.flops_per_token, the input embedding is a lookup and does not count,
  the output projection does (a tied table counts once), and the few biases are included.
  """
  n = param_count(params)
  if not cfg.tie_embeddings:
    n -= cfg.vocab_size * cfg.d_model
  return float(6 * n)
