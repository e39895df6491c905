"""Encoder-decoder Transformer (T5-style, Flax Linen): a bidirectional encoder, and a causal decoder
with cross-attention to the encoder output, sharing one token embedding (tied to the output).

Built from the same blocks as models/transformer.py. Each stack has its own positions (learned tables,
sinusoidal, rotary, or T5's relative position bias: bidirectional buckets in the encoder, causal ones in
the decoder, one table per stack shared by its layers, none in cross-attention) and final norm. The
decoder keeps a KV cache of its self-attention for decoding; cross-attention keys and values are
recomputed from the encoder output at every step.

Shape suffixes: B batch, S encoder length, T decoder (target) length, L the length of a Stack's own
row (S in the encoder, T in the decoder), D d_model, V vocab.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmlab.models.transformer import (TransformerConfig, _init, _norm, add_positions, position_bias, run_blocks,
                                      self_attention_inputs, token_embedding)


def cross_attention_mask(segment_ids_BT, encoder_segment_ids_BS):
  """[B, 1, T, S]: a decoder token attends to the real encoder tokens of its own example (segment).
  segment_ids_BT None (decoding): every decoder token belongs to the row's one example."""
  real_B1S = encoder_segment_ids_BS[:, None, :] > 0
  if segment_ids_BT is None:
    return real_B1S[:, :, None, :]
  same_BTS = segment_ids_BT[:, :, None] == encoder_segment_ids_BS[:, None, :]
  return (same_BTS & real_B1S)[:, None]


class Stack(nn.Module):
  """Positions, blocks and the final norm over already embedded tokens."""
  cfg: TransformerConfig
  causal: bool

  @nn.compact
  def __call__(self, x_BLD, segment_ids_BL=None, positions_BL=None, encoded_BSD=None,
               encoder_segment_ids_BS=None, *, deterministic=True, decode=False):
    cfg = self.cfg
    cache_index, positions_BL, key_positions_BS, mask_B1LS = self_attention_inputs(
        self, x_BLD.shape[:2], segment_ids_BL, positions_BL, None, self.causal, decode)
    x_BLD, rope = add_positions(self, cfg, x_BLD, positions_BL, deterministic)
    bias_BHLS = position_bias(self, cfg, positions_BL, key_positions_BS, self.causal)
    cross_mask = None
    if encoded_BSD is not None:
      cross_mask = cross_attention_mask(None if decode else segment_ids_BL, encoder_segment_ids_BS)
    x_BLD = run_blocks(cfg, x_BLD, mask_B1LS, rope, bias_BHLS, cache_index, deterministic=deterministic,
                       decode=decode, encoded_BSD=encoded_BSD, cross_mask_B1LS=cross_mask)
    return _norm(cfg, "ln_final")(x_BLD)


class EncoderDecoder(nn.Module):
  """__call__ returns float32 decoder logits [B, T, V]; encode / decode run the halves (for decoding)."""
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.embed = token_embedding(cfg)
    self.encoder = Stack(cfg, causal=False)
    self.decoder = Stack(cfg, causal=True)
    if not cfg.tie_embeddings:
      self.unembed = self.param("unembed", _init(("embed", "vocab")), (cfg.d_model, cfg.vocab_size))

  def __call__(self, encoder_tokens_BS, decoder_tokens_BT, encoder_segment_ids_BS=None,
               decoder_segment_ids_BT=None, encoder_positions_BS=None, decoder_positions_BT=None, *,
               deterministic=True):
    if encoder_segment_ids_BS is None:
      encoder_segment_ids_BS = jnp.ones_like(encoder_tokens_BS)
    encoded_BSD = self.encode(encoder_tokens_BS, encoder_segment_ids_BS, encoder_positions_BS,
                              deterministic=deterministic)
    return self.decode(decoder_tokens_BT, encoded_BSD, encoder_segment_ids_BS, decoder_segment_ids_BT,
                       decoder_positions_BT, deterministic=deterministic)

  def encode(self, tokens_BS, segment_ids_BS=None, positions_BS=None, *, deterministic=True):
    return self.encoder(self.embed(tokens_BS), segment_ids_BS, positions_BS, deterministic=deterministic)

  def decode(self, tokens_BT, encoded_BSD, encoder_segment_ids_BS, segment_ids_BT=None, positions_BT=None, *,
             deterministic=True, decode=False):
    """Decoder logits; decode=True: one step against the KV cache (see init_decoder_cache)."""
    cfg = self.config
    h_BTD = self.decoder(self.embed(tokens_BT), segment_ids_BT, positions_BT, encoded_BSD,
                         encoder_segment_ids_BS, deterministic=deterministic, decode=decode)
    w_DV = self.embed.embedding.T if cfg.tie_embeddings else self.unembed
    # Logits accumulate in float32 even when compute is bf16.
    return jnp.einsum("btd,dv->btv", h_BTD, w_DV.astype(cfg.dtype), preferred_element_type=jnp.float32)


def init_decoder_cache(model: EncoderDecoder, batch_size: int, cache_len: int, encoder_len: int):
  """An empty decoder KV cache (index 0) for up to cache_len target tokens, without running the model."""
  shapes = jax.eval_shape(
      lambda t, e, s: model.init(jax.random.key(0), t, e, s, method="decode", decode=True)["cache"],
      jax.ShapeDtypeStruct((batch_size, cache_len), jnp.int32),
      jax.ShapeDtypeStruct((batch_size, encoder_len, model.config.d_model), model.config.dtype),
      jax.ShapeDtypeStruct((batch_size, encoder_len), jnp.int32))
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def flops_per_token(cfg: TransformerConfig, inputs_length: int, targets_length: int, params) -> float:
  """Training FLOPs per encoder input token (forward + backward = 3 x forward, a multiply-add = 2 FLOPs) of
  rows of S = inputs_length encoder tokens and T = targets_length decoder tokens:

    3 [2 (N_enc S + N_kv S + N_dec T + V D T) + 4 D layers (S^2 + T^2 + T S)] / S

  N_enc: the encoder's matmul parameters, applied to each input token; N_kv: the cross-attention key and
  value projections, applied to the S encoder outputs; N_dec: the rest of the decoder, applied to each
  target token; V D: the output projection (the tied embedding: its input lookups are free), on the
  targets only; then attention scores and weighted values per query-key pair: encoder S x S, decoder
  self-attention T x T, cross-attention T x S. Lookup tables (relative position biases, learned
  positions) are left out, norms and biases kept (as in transformer.flops_per_token, which with T = S
  and no decoder would give the same count for one stack). Span corruption at seq_len 128 has T = 29
  (objectives/span.py), so the decoder's share is about a quarter of the encoder's.
  """
  lookups = ("relative_bias", "pos_embed")

  def matmul_params(tree, inside: str | None = None) -> int:
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(tree)):
      names = [str(getattr(k, "key", k)) for k in path]
      if not any(n in lookups for n in names) and (inside is None or inside in names):
        total += leaf.size
    return total

  s, t, d = inputs_length, targets_length, cfg.d_model
  n_enc = matmul_params(params["encoder"])
  n_kv = matmul_params(params["decoder"], inside="kv")
  n_dec = matmul_params(params["decoder"]) - n_kv
  forward = (2 * (n_enc * s + n_kv * s + n_dec * t + cfg.vocab_size * d * t)
             + 4 * d * cfg.num_layers * (s * s + t * t + t * s))
  return float(3 * forward / s)
