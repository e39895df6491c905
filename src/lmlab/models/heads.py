"""Task heads on any family's body: a sequence classifier over pooled hidden states, and a span
extractor (start / end logits per token) for extractive question answering.

The body is the pretraining model itself (a Transformer, RecurrentLM or EncoderDecoder module), held as
the submodule `body`, so its parameter tree is the pretrained one minus the language-model output layers
(which are never run). Shape suffixes: B batch, L row length, D d_model, C classes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmlab.models import encdec

# first: the first token ([CLS]); pooler: BERT's pooler on it (dense + tanh, the pretrained one when the
# checkpoint has it, see models.transfer); last: the last real token (EOS / [SEP]); last_text: the one
# before it (the last token of the text, which causal pretraining trained as an input); mean: the mean of
# the real tokens.
POOLINGS = ("first", "pooler", "last", "last_text", "mean")


def pool(x_BLD, segment_ids_BL, pooling: str):
  """[B, D] from the real tokens (segment > 0) of each row (see POOLINGS; pooler's dense + tanh is applied
  by the Classifier after "first")."""
  real_BL = segment_ids_BL > 0
  if pooling in ("first", "pooler"):
    return x_BLD[:, 0]
  if pooling in ("last", "last_text"):
    last_B = jnp.sum(real_BL, axis=1) - (1 if pooling == "last" else 2)
    return jnp.take_along_axis(x_BLD, jnp.maximum(last_B, 0)[:, None, None], axis=1)[:, 0]
  if pooling == "mean":
    count_B1 = jnp.maximum(jnp.sum(real_BL, axis=1, keepdims=True), 1)
    return jnp.sum(jnp.where(real_BL[..., None], x_BLD, 0), axis=1) / count_B1
  raise ValueError(f"pooling = {pooling!r} is not one of {', '.join(POOLINGS)}.")


def combine_chunks(pooled_BKD, segment_ids_BKL, pooling: str):
  """[B, D]: the pooled features of each example's real chunks (rows with a real token), averaged; with
  mean pooling weighted by their real tokens, so that the result is the mean over the whole text."""
  real_BKL = segment_ids_BKL > 0
  weight_BK = (jnp.sum(real_BKL, axis=-1) if pooling == "mean" else jnp.any(real_BKL, axis=-1)).astype(jnp.float32)
  weight_BK1 = (weight_BK / jnp.maximum(jnp.sum(weight_BK, axis=1, keepdims=True), 1.0))[..., None]
  return jnp.sum(pooled_BKD * weight_BK1, axis=1)


def body_features(body: nn.Module, tokens_BL, segment_ids_BL, positions_BL, deterministic: bool, **extra):
  """The body's final hidden states [B, L, D] in float32 (an encoder-decoder's encoder output); `extra`
  keyword inputs (prefix_BL, token_types_BL) reach Transformer and recurrent bodies."""
  if isinstance(body, encdec.EncoderDecoder):
    h_BLD = body.encode(tokens_BL, segment_ids_BL, positions_BL, deterministic=deterministic)
  else:
    h_BLD = body(tokens_BL, segment_ids_BL, positions_BL, deterministic=deterministic, features=True, **extra)
  return h_BLD.astype(jnp.float32)


def _kernel_init():
  return nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", None))


def _bias_init():
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,))


def linear_head(x, features: int):
  """The task head: one Dense layer named `head` (N(0, 0.02) kernel, zero bias), inside the caller."""
  return nn.Dense(features, kernel_init=_kernel_init(), bias_init=_bias_init(), name="head")(x)


class Classifier(nn.Module):
  """body -> hidden states [B, L, D] (the encoder's for an encoder-decoder) -> pool -> dropout -> linear
  head. Returns float32 class logits [B, C]. freeze_body stops gradients at the pooled features, so a
  linear probe costs no backward pass through the body.

  A text longer than one row comes as chunks, tokens [B, K, L] (tasks/inputs.py): every chunk is read as
  its own row and pooled, and the example's features combine its real chunks (combine_chunks), so a text
  of one chunk gets exactly its single-row features."""
  body: nn.Module
  num_classes: int
  pooling: str = "last"
  freeze_body: bool = False
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, tokens_BL, segment_ids_BL=None, positions_BL=None, *, prefix_BL=None, deterministic=True):
    """prefix_BL: the tokens a prefix-LM body reads bidirectionally (Transformer bodies only)."""
    if segment_ids_BL is None:
      segment_ids_BL = (tokens_BL != 0).astype(jnp.int32)
    chunks_BK = tokens_BL.shape[:-1]  # (B,) or (B, K): rows are read flat, [B K, L]
    flat = lambda x: None if x is None else x.reshape(-1, x.shape[-1])
    extra = {} if prefix_BL is None else {"prefix_BL": flat(prefix_BL)}
    h_BLD = body_features(self.body, flat(tokens_BL), flat(segment_ids_BL), flat(positions_BL), deterministic,
                          **extra)
    pooled_BD = pool(h_BLD, flat(segment_ids_BL), self.pooling)
    if self.pooling == "pooler":  # BERT's pooler, named as in the pretraining model (transferred from it)
      pooled_BD = nn.tanh(nn.Dense(pooled_BD.shape[-1], kernel_init=_kernel_init(), bias_init=_bias_init(),
                                   name="pooler")(pooled_BD))
    if len(chunks_BK) == 2:
      pooled_BD = combine_chunks(pooled_BD.reshape(*chunks_BK, -1), segment_ids_BL, self.pooling)
    if self.freeze_body:
      pooled_BD = jax.lax.stop_gradient(pooled_BD)
    if self.dropout_rate > 0 and not deterministic:
      pooled_BD = nn.Dropout(self.dropout_rate)(pooled_BD, deterministic=False)
    return linear_head(pooled_BD, self.num_classes)


class SpanExtractor(nn.Module):
  """body -> hidden states [B, L, D] -> one linear layer -> start and end logits [B, 2, L] (BERT's SQuAD
  head), float32, set very low outside candidates_BL (the columns where a span may start or end: the
  context and column 0 for no answer). token_types_BL reach a body that has token-type embeddings."""
  body: nn.Module
  freeze_body: bool = False
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, tokens_BL, segment_ids_BL=None, positions_BL=None, *, candidates_BL=None,
               token_types_BL=None, deterministic=True):
    if segment_ids_BL is None:
      segment_ids_BL = (tokens_BL != 0).astype(jnp.int32)
    extra = {}
    if token_types_BL is not None and getattr(self.body.config, "num_token_types", 0):
      extra["token_types_BL"] = token_types_BL
    h_BLD = body_features(self.body, tokens_BL, segment_ids_BL, positions_BL, deterministic, **extra)
    if self.freeze_body:
      h_BLD = jax.lax.stop_gradient(h_BLD)
    if self.dropout_rate > 0 and not deterministic:
      h_BLD = nn.Dropout(self.dropout_rate)(h_BLD, deterministic=False)
    logits_B2L = jnp.swapaxes(linear_head(h_BLD, 2), 1, 2)
    if candidates_BL is not None:
      logits_B2L = jnp.where(candidates_BL[:, None, :] > 0, logits_B2L, -1e9)
    return logits_B2L
