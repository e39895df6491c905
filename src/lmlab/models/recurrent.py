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

_CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}

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


class ResettingCell(nn.Module):
  """One time step of an LSTM / GRU cell whose carry is zeroed first where reset_B is true.

  The body of an nn.scan over time: the carry is the cell state, the scanned input is (x_BD, reset_B).
  """
  cfg: RecurrentConfig

  @nn.compact
  def __call__(self, carry, inputs):
    x_BD, reset_B = inputs
    # Zero state = the state a fresh sequence starts from, so no information crosses documents.
    carry = jax.tree_util.tree_map(lambda c: jnp.where(reset_B[:, None], jnp.zeros_like(c), c), carry)
    cell = _CELLS[self.cfg.cell](
        self.cfg.d_model, dtype=self.cfg.dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), _KERNEL),
        recurrent_kernel_init=nn.with_logical_partitioning(nn.initializers.orthogonal(), _KERNEL),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)), name="cell")
    carry, h_BD = cell(carry, x_BD)
    return carry, h_BD

  @nn.nowrap
  def initial_carry(self, batch_size: int):
    # float32 even for bf16 compute: the state accumulates over the whole sequence. The cells keep it
    # float32 (their bf16 gate outputs are promoted when mixed with it), so the scan carry type is fixed.
    h_BD = jnp.zeros((batch_size, self.cfg.d_model), jnp.float32)
    return (h_BD, h_BD) if self.cfg.cell == "lstm" else h_BD  # LSTM carry is (c, h)


# Params are shared by all time steps (broadcast); time is axis 1 of x_BLD and reset_BL.
_ScanCell = nn.scan(ResettingCell, variable_broadcast="params", split_rngs={"params": False},
                    in_axes=1, out_axes=1)
_ReverseScanCell = nn.scan(ResettingCell, variable_broadcast="params", split_rngs={"params": False},
                           in_axes=1, out_axes=1, reverse=True)


class RecurrentLayer(nn.Module):
  """One recurrent layer over [B, L, D]; bidirectional: forward and backward scans, concat, project."""
  cfg: RecurrentConfig

  @nn.compact
  def __call__(self, x_BLD, segment_ids_BL):
    cfg = self.cfg
    B = x_BLD.shape[0]
    fwd = _ScanCell(cfg, name="fwd")
    _, h_BLD = fwd(fwd.initial_carry(B), (x_BLD, segment_starts(segment_ids_BL)))
    if not cfg.bidirectional:
      return h_BLD.astype(cfg.dtype)
    # Reversed scan: starts at the last position and resets at every segment end, so padding (after
    # the last segment) and later segments never reach earlier positions.
    bwd = _ReverseScanCell(cfg, name="bwd")
    _, g_BLD = bwd(bwd.initial_carry(B), (x_BLD, segment_ends(segment_ids_BL)))
    # Concat + project (not a sum): the directions keep separate features and the next layer (and a
    # tied output projection) still sees d_model wide inputs; costs 2 D^2 params per layer.
    hg_BL2D = jnp.concatenate([h_BLD, g_BLD], axis=-1).astype(cfg.dtype)
    return nn.Dense(cfg.d_model, dtype=cfg.dtype,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                             ("mlp", "embed")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
                    name="combine")(hg_BL2D)


class RecurrentLM(nn.Module):
  """Embedding -> dropout -> num_layers x (recurrent layer -> dropout) -> output projection (float32)."""
  config: RecurrentConfig

  @nn.compact
  def __call__(self, tokens_BL, segment_ids_BL=None, positions_BL=None, *, deterministic=True,
               features=False):
    """features=True returns the last layer's hidden states [B, L, D] instead of logits (task heads)."""
    del positions_BL  # order comes from the recurrence; accepted to match the Transformer's signature
    cfg = self.config
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones_like(tokens_BL)  # one segment per row: reset only at the row edges
    # std d_model^-1/2: inputs of O(1/sqrt(D)) per unit, and tied logits of O(1) at init.
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype,
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(cfg.d_model ** -0.5), ("vocab", "embed")),
                     name="embed")
    x_BLD = self._dropout(embed(tokens_BL), deterministic)
    for i in range(cfg.num_layers):
      x_BLD = self._dropout(RecurrentLayer(cfg, name=f"layer_{i}")(x_BLD, segment_ids_BL), deterministic)
    if features:
      return x_BLD

    # Logits accumulate in float32 even when compute is bf16.
    if cfg.tie_embeddings:
      w_DV = embed.embedding.T
    else:
      w_DV = self.param("unembed", nn.with_logical_partitioning(
          nn.initializers.normal(cfg.d_model ** -0.5), ("embed", "vocab")), (cfg.d_model, cfg.vocab_size))
    return jnp.einsum("bld,dv->blv", x_BLD, w_DV.astype(cfg.dtype), preferred_element_type=jnp.float32)

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
