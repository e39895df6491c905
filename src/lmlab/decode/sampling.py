"""Batched sampling from causal models: one jitted lax.while_loop over positions (lm1b style), with the
KV cache for the Transformer.

Prompts are right-padded into one [B, L] buffer, L = longest prompt + max_new_tokens. Step t feeds
the token at position t of every row and writes position t+1: copied from the prompt while t+1 is
still inside that row's prompt, sampled otherwise. Rows thus share one cache index.

Shape suffixes: B batch (prompts), L the buffer length (prompt + new tokens), V vocabulary.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


@functools.partial(jax.jit, static_argnames=("model", "temperature", "top_k", "top_p"))
def _generate(model, params, buf_BL, lengths_B, rng, eos_id, *, temperature, top_k, top_p):
  B, L = buf_BL.shape
  # The Transformer decodes one token per step against its KV cache; any other causal model (the
  # recurrent LMs) re-runs the whole buffer, whose logits at t depend only on tokens <= t.
  use_cache = isinstance(model, Transformer)
  cache = init_cache(model, B, L) if use_cache else {}

  def cond(state):
    t, _, _, done_B = state
    return (t < L - 1) & ~jnp.all(done_B)

  def body(state):
    t, buf_BL, cache, done_B = state
    if use_cache:
      token_B1 = jax.lax.dynamic_slice_in_dim(buf_BL, t, 1, axis=1)
      logits_B1V, mutated = model.apply({"params": params, "cache": cache}, token_B1, decode=True,
                                        mutable=["cache"])
      logits_BV, cache = logits_B1V[:, 0], mutated["cache"]
    else:
      logits_BV = jax.lax.dynamic_index_in_dim(model.apply({"params": params}, buf_BL), t, axis=1,
                                               keepdims=False)
    sampled_B = _next_token(logits_BV, jax.random.fold_in(rng, t), temperature, top_k, top_p)
    in_prompt_B = t + 1 < lengths_B
    prompt_B = jax.lax.dynamic_index_in_dim(buf_BL, t + 1, axis=1, keepdims=False)
    next_B = jnp.where(in_prompt_B, prompt_B, sampled_B)
    done_B = done_B | (~in_prompt_B & (next_B == eos_id))
    buf_BL = jax.lax.dynamic_update_slice_in_dim(buf_BL, next_B[:, None], t + 1, axis=1)
    return t + 1, buf_BL, cache, done_B

  state = (jnp.int32(0), buf_BL, cache, jnp.zeros((B,), bool))
  return jax.lax.while_loop(cond, body, state)[1]


def sample(model: nn.Module, params, prompts: list[list[int]], *, max_new_tokens: int, rng,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
           pad_id: int = 0) -> list[list[int]]:
  """Continues each prompt with up to max_new_tokens tokens; temperature 0 is greedy.

  Returns only the generated tokens of each prompt, ending with eos_id if it was sampled. The same
  rng gives the same samples. `params` may be boxed (nn.Partitioned) or plain.
  """
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("sample() needs at least one prompt and every prompt needs >= 1 token (e.g. BOS).")
  if temperature < 0:
    raise ValueError(f"temperature = {temperature} must be >= 0 (0: greedy).")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens = {max_new_tokens} must be >= 1.")
  lengths = [len(p) for p in prompts]
  total = max(lengths) + max_new_tokens
  if total > getattr(model.config, "max_len", total):  # recurrent models have no length limit
    raise ValueError(f"Longest prompt ({max(lengths)} tokens) + max_new_tokens ({max_new_tokens}) = "
                     f"{total} exceeds the model's max_len = {model.config.max_len}; shorten the prompt "
                     "or generate fewer tokens.")
  buf = np.full((len(prompts), total), pad_id, np.int32)
  for row, prompt in zip(buf, prompts):
    row[:len(prompt)] = prompt
  out = _generate(model, nn.meta.unbox(params), jnp.asarray(buf), jnp.asarray(lengths, jnp.int32), rng,
                  eos_id=jnp.int32(-1 if eos_id is None else eos_id),  # -1 matches no token
                  temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
  out = np.asarray(out)
  results = []
  for row, n in zip(out, lengths):
    generated = row[n:n + max_new_tokens].tolist()
    if eos_id is not None and eos_id in generated:
      generated = generated[:generated.index(eos_id) + 1]
    results.append(generated)
  return results
