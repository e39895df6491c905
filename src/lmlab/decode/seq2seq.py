"""Decoding targets from an encoder-decoder (models/encdec.py) with the decoder's KV cache: sampling
(greedy, temperature, top-k, top-p) and beam search, each one jitted lax.while_loop over target
positions. The encoder runs once; decoding starts from BOS (as the decoder inputs did in training).

Shape suffixes: B batch, S encoder length, D d_model, T target length, E beams, N batch x beams
flattened, V vocabulary.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmlab.data.tokenizer import BOS_ID, PAD_ID
from lmlab.decode import beam
from lmlab.decode.sampling import _next_token, suppress_eos
from lmlab.models.encdec import EncoderDecoder, init_decoder_cache


def _decode_step(model, params, cache, tokens_N, encoded_NSD, encoder_segment_ids_NS):
  """Logits [N, V] for one new token per row, and the updated cache."""
  logits_N1V, mutated = model.apply({"params": params, "cache": cache}, tokens_N[:, None], encoded_NSD,
                                    encoder_segment_ids_NS, method="decode", decode=True, mutable=["cache"])
  return logits_N1V[:, 0], mutated["cache"]


@functools.partial(jax.jit, static_argnames=("model", "max_len", "temperature", "top_k", "top_p", "min_new"))
def _sample(model, params, tokens_BS, segment_ids_BS, rng, eos_id, *, max_len, temperature, top_k, top_p,
            min_new=0):
  B, S = tokens_BS.shape
  encoded_BSD = model.apply({"params": params}, tokens_BS, segment_ids_BS, method="encode")
  cache = init_decoder_cache(model, B, max_len, S)

  def cond(state):
    t, _, _, done_B = state
    return (t < max_len) & ~jnp.all(done_B)

  def body(state):
    t, out_BT, cache, done_B = state
    previous_B = jnp.where(t == 0, BOS_ID, jax.lax.dynamic_index_in_dim(out_BT, t - 1, 1, keepdims=False))
    logits_BV, cache = _decode_step(model, params, cache, previous_B, encoded_BSD, segment_ids_BS)
    logits_BV = suppress_eos(logits_BV, eos_id, t, min_new)
    next_B = _next_token(logits_BV, jax.random.fold_in(rng, t), temperature, top_k, top_p)
    next_B = jnp.where(done_B, PAD_ID, next_B)
    out_BT = jax.lax.dynamic_update_slice_in_dim(out_BT, next_B[:, None], t, axis=1)
    return t + 1, out_BT, cache, done_B | (next_B == eos_id)

  state = (jnp.int32(0), jnp.zeros((B, max_len), jnp.int32), cache, jnp.zeros((B,), bool))
  return jax.lax.while_loop(cond, body, state)[1]


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam_size", "alpha"))
def _beam_search(model, params, tokens_BS, segment_ids_BS, eos_id, *, max_len, beam_size, alpha):
  B, S = tokens_BS.shape
  E, N = beam_size, tokens_BS.shape[0] * beam_size
  encoded_BSD = model.apply({"params": params}, tokens_BS, segment_ids_BS, method="encode")
  encoded_NSD, segment_ids_NS = jnp.repeat(encoded_BSD, E, axis=0), jnp.repeat(segment_ids_BS, E, axis=0)

  def step(cache, previous_N, t):
    return _decode_step(model, params, cache, jnp.where(t == 0, BOS_ID, previous_N), encoded_NSD, segment_ids_NS)

  return beam.beam_search(step, init_decoder_cache(model, N, max_len, S), B, beam_size=E, max_len=max_len,
                          eos_id=eos_id, alpha=alpha, pad_id=PAD_ID, gather_fn=beam.gather_cache_rows)


def _encoder_batch(inputs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
  if not inputs or any(len(x) == 0 for x in inputs):
    raise ValueError("Every input needs at least one token.")
  tokens_BS = np.zeros((len(inputs), max(map(len, inputs))), np.int32)
  for row, ids in zip(tokens_BS, inputs):
    row[:len(ids)] = ids
  return tokens_BS, (tokens_BS != PAD_ID).astype(np.int32)


def _trim(row, eos_id) -> list[int]:
  out = [int(t) for t in row]
  return out[:out.index(eos_id) + 1] if eos_id in out else [t for t in out if t != PAD_ID]


def generate(model: EncoderDecoder, params, inputs: list[list[int]], *, max_len: int, rng, eos_id: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, beam_size: int = 0,
             alpha: float = 0.0, min_new_tokens: int = 0) -> list[list[int]]:
  """Target ids for each input (encoder token ids), ending with eos_id if it was produced.

  beam_size >= 1: beam search (1 is greedy) with GNMT length penalty alpha; otherwise sampling with
  temperature (0: greedy), top_k and top_p, and no EOS before min_new_tokens tokens. The same rng gives
  the same samples.
  """
  tokens_BS, segment_ids_BS = _encoder_batch(inputs)
  if max_len < 1:
    raise ValueError(f"max_len = {max_len} must be >= 1.")
  params = nn.meta.unbox(params)
  if beam_size >= 1:
    out, _ = _beam_search(model, params, tokens_BS, segment_ids_BS, jnp.int32(eos_id), max_len=max_len,
                          beam_size=int(beam_size), alpha=float(alpha))
  else:
    if temperature < 0:
      raise ValueError(f"temperature = {temperature} must be >= 0 (0: greedy).")
    out = _sample(model, params, tokens_BS, segment_ids_BS, rng, jnp.int32(eos_id), max_len=max_len,
                  temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                  min_new=int(min_new_tokens))
  return [_trim(row, eos_id) for row in np.asarray(out)]


def beam_search(model: EncoderDecoder, params, inputs: list[list[int]], *, max_len: int, eos_id: int,
                beam_size: int = 4, alpha: float = 0.0) -> tuple[list[list[int]], np.ndarray]:
  """The best beam per input and its length-penalized log-probability (alpha 0: the total; for tests
  and scoring)."""
  tokens_BS, segment_ids_BS = _encoder_batch(inputs)
  out, scores = _beam_search(model, nn.meta.unbox(params), tokens_BS, segment_ids_BS, jnp.int32(eos_id),
                             max_len=max_len, beam_size=beam_size, alpha=float(alpha))
  return [_trim(row, eos_id) for row in np.asarray(out)], np.asarray(scores)
