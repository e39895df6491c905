"""Batched sampling (and beam search) from causal models: the prompts in one forward pass, then one
jitted lax.while_loop over new tokens (lm1b style), with the KV cache for the Transformer.

Prompts are left-padded into one [B, P] block (P the longest prompt), so every row's first new token
comes from the same column and rows share one cache index; the padding is masked out of attention and
positions count from each row's first real token. A prefix LM's prompt is its bidirectional prefix.

Shape suffixes: B batch (prompts), P prompt block, L = P + new tokens, N new tokens, V vocabulary.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmlab.decode import beam
from lmlab.models.transformer import Transformer, init_cache


def filter_logits(logits_BV, top_k: int = 0, top_p: float = 1.0):
  """Sets to -inf every logit outside the top_k (0: off) and outside the nucleus top_p (1.0: off).

  The nucleus is the smallest set of most likely tokens whose probability reaches top_p; the most
  likely token is always kept. Ties at the threshold are all kept.
  """
  if top_k > 0 and top_k < logits_BV.shape[-1]:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][..., -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[..., ::-1]
    probs_BV = jax.nn.softmax(sorted_BV.astype(jnp.float32), axis=-1)
    # Keep a token if the mass strictly before it is below top_p.
    keep_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV < top_p
    threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)
  return logits_BV


def _next_token(logits_BV, rng, temperature, top_k, top_p):
  if temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = filter_logits(logits_BV / temperature, top_k, top_p)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def _prompt_forward(model, params, prompt_BP, lengths_B, max_new: int, prefix: bool):
  """The prompts (left-padded into [B, P]) in one forward pass: (logits [B, V] of the first new token,
  decoding state). The Transformer fills its KV cache, with the prompt as a bidirectional prefix when
  `prefix` (a prefix LM reads its prompt as it was trained to); the recurrent LMs keep every layer's
  final carry (the left padding is a segment of its own, so the state restarts at the first real
  token)."""
  B, P = prompt_BP.shape
  segment_ids_BP = (jnp.arange(P) >= P - lengths_B[:, None]).astype(jnp.int32)
  if isinstance(model, Transformer):
    cache = init_cache(model, B, P + max_new)
    logits_BPV, mutated = model.apply({"params": params, "cache": cache}, prompt_BP, segment_ids_BP,
                                      prefix_BL=segment_ids_BP if prefix else None, decode=True,
                                      mutable=["cache"])
    return logits_BPV[:, -1], mutated["cache"]
  logits_BPV, carries = model.apply({"params": params}, prompt_BP, segment_ids_BP, return_carries=True)
  return logits_BPV[:, -1], carries


def _step(model, params, state, tokens_B):
  """Feeds the token generated last: (logits [B, V] of the next one, state)."""
  if isinstance(model, Transformer):
    logits_B1V, mutated = model.apply({"params": params, "cache": state}, tokens_B[:, None], decode=True,
                                      mutable=["cache"])
    return logits_B1V[:, 0], mutated["cache"]
  logits_B1V, carries = model.apply({"params": params}, tokens_B[:, None], carries=state, return_carries=True)
  return logits_B1V[:, 0], carries


def suppress_eos(logits_BV, eos_id, t, min_new: int):
  """Logits with EOS ruled out while fewer than min_new tokens have been generated (t of them)."""
  if not min_new:
    return logits_BV
  is_eos_V = jnp.arange(logits_BV.shape[-1]) == eos_id
  return jnp.where((t < min_new) & is_eos_V, jnp.finfo(logits_BV.dtype).min, logits_BV)


@functools.partial(jax.jit, static_argnames=("model", "max_new", "temperature", "top_k", "top_p", "prefix",
                                             "min_new"))
def _generate(model, params, prompt_BP, lengths_B, rng, eos_id, *, max_new, temperature, top_k, top_p, prefix,
              min_new=0):
  B = prompt_BP.shape[0]
  logits_BV, state = _prompt_forward(model, params, prompt_BP, lengths_B, max_new, prefix)

  def cond(carry):
    t, _, _, _, done_B = carry
    return (t < max_new) & ~jnp.all(done_B)

  def body(carry):
    t, out_BN, logits_BV, state, done_B = carry
    logits_BV = suppress_eos(logits_BV, eos_id, t, min_new)
    next_B = _next_token(logits_BV, jax.random.fold_in(rng, t), temperature, top_k, top_p)
    out_BN = jax.lax.dynamic_update_slice_in_dim(out_BN, next_B[:, None], t, axis=1)
    logits_BV, state = _step(model, params, state, next_B)
    return t + 1, out_BN, logits_BV, state, done_B | (next_B == eos_id)

  carry = (jnp.int32(0), jnp.zeros((B, max_new), jnp.int32), logits_BV, state, jnp.zeros((B,), bool))
  return jax.lax.while_loop(cond, body, carry)[1]


def _left_padded(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  longest = max(map(len, prompts))
  buf_BP = np.full((len(prompts), longest), pad_id, np.int32)
  for row, prompt in zip(buf_BP, prompts):
    row[longest - len(prompt):] = prompt
  return buf_BP, np.array([len(p) for p in prompts], np.int32)


def _check(model, prompts, max_new_tokens: int) -> None:
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("Decoding needs at least one prompt and every prompt needs >= 1 token (e.g. BOS).")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens = {max_new_tokens} must be >= 1.")
  longest = max(map(len, prompts))
  total = longest + max_new_tokens
  if total > getattr(model.config, "max_len", total):  # recurrent models have no length limit
    raise ValueError(f"Longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
                     f"{total} exceeds the model's max_len = {model.config.max_len}; shorten the prompt "
                     "or generate fewer tokens.")


def _trim(row, eos_id) -> list[int]:
  out = [int(t) for t in row]
  return out[:out.index(eos_id) + 1] if eos_id is not None and eos_id in out else out


def sample(model: nn.Module, params, prompts: list[list[int]], *, max_new_tokens: int, rng,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
           pad_id: int = 0, prefix: bool = False, min_new_tokens: int = 0) -> list[list[int]]:
  """Continues each prompt with up to max_new_tokens tokens; temperature 0 is greedy. prefix: the prompt
  is read as a prefix LM's bidirectional prefix (Transformer decoders trained with prefix_lm);
  min_new_tokens: EOS is not allowed before that many tokens (e.g. 1: a non-empty output).

  Returns only the generated tokens of each prompt, ending with eos_id if it was sampled. The same
  rng gives the same samples. `params` may be boxed (nn.Partitioned) or plain.
  """
  _check(model, prompts, max_new_tokens)
  if temperature < 0:
    raise ValueError(f"temperature = {temperature} must be >= 0 (0: greedy).")
  prompt_BP, lengths_B = _left_padded(prompts, pad_id)
  out = _generate(model, nn.meta.unbox(params), jnp.asarray(prompt_BP), jnp.asarray(lengths_B), rng,
                  eos_id=jnp.int32(-1 if eos_id is None else eos_id),  # -1 matches no token
                  max_new=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k),
                  top_p=float(top_p), prefix=bool(prefix), min_new=int(min_new_tokens))
  return [_trim(row, eos_id) for row in np.asarray(out)]


@functools.partial(jax.jit, static_argnames=("model", "max_new", "beam_size", "alpha", "prefix"))
def _beam(model, params, prompt_BP, lengths_B, eos_id, *, max_new, beam_size, alpha, prefix):
  B = prompt_BP.shape[0]
  logits_BV, state = _prompt_forward(model, params, prompt_BP, lengths_B, max_new, prefix)
  # One copy of each prompt's state per beam (rows b * E + e), reordered as the beams are.
  rows = beam.gather_cache_rows if isinstance(model, Transformer) else beam.take_rows
  state = rows(state, jnp.repeat(jnp.arange(B), beam_size))

  def step(state, previous_N, t):
    del t
    return _step(model, params, state, previous_N)

  return beam.beam_search(step, state, B, beam_size=beam_size, max_len=max_new, eos_id=eos_id, alpha=alpha,
                          first_logp_BV=jax.nn.log_softmax(logits_BV), gather_fn=rows)


def beam_search(model: nn.Module, params, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int,
                beam_size: int = 4, alpha: float = 0.0, pad_id: int = 0, prefix: bool = False
                ) -> tuple[list[list[int]], np.ndarray]:
  """The best continuation of each prompt by beam search (decode/beam.py: finished hypotheses kept apart,
  GNMT length penalty alpha), ending with eos_id if produced, and its length-penalized log-probability."""
  _check(model, prompts, max_new_tokens)
  prompt_BP, lengths_B = _left_padded(prompts, pad_id)
  out, scores = _beam(model, nn.meta.unbox(params), jnp.asarray(prompt_BP), jnp.asarray(lengths_B),
                      jnp.int32(eos_id), max_new=int(max_new_tokens), beam_size=int(beam_size),
                      alpha=float(alpha), prefix=bool(prefix))
  return [[t for t in _trim(row, eos_id) if t != pad_id] for row in np.asarray(out)], np.asarray(scores)
