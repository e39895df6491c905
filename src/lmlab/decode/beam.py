"""Beam search over any autoregressive step function (decoder-only and encoder-decoder Transformers,
LSTM/GRU), after T5X's: hypotheses that emitted EOS leave the alive pool for a finished pool, and the
two pools are ranked apart. A finished hypothesis is only ever displaced by one with a better
length-penalized score, never by an alive one with a higher raw log-probability (which may end worse).

Shape suffixes: B batch, E beams, N = B * E rows (row n = b * E + e), K = 2 * E candidates, T max_len,
V vocabulary.
"""

import jax
import jax.numpy as jnp


def _length_penalty(length, alpha):
  """GNMT: ((5 + length) / 6) ** alpha; alpha 0 ranks by plain log-probability."""
  return ((5.0 + length) / 6.0) ** alpha


def take_rows(state, index_N):
  """Reorders axis 0 of every array of the state."""
  return jax.tree_util.tree_map(lambda x: jnp.take(x, index_N, axis=0), state)


def gather_cache_rows(tree, index_N):
  """Reorders the rows (batch x beam) of a KV cache: axis -4 of the cached keys and values ([layers,]
  N, S, H, K) and axis 0 of the rows' offsets [N]; the shared index stays."""
  return jax.tree_util.tree_map(
      lambda x: jnp.take(x, index_N, axis=x.ndim - 4) if x.ndim >= 4 else jnp.take(x, index_N, axis=0)
      if x.ndim == 1 else x, tree)


def _top(scores_BX, seqs_BXT, k):
  """The k best-scored hypotheses of each batch row (on ties, the earlier one)."""
  scores_Bk, index_Bk = jax.lax.top_k(scores_BX, k)
  return scores_Bk, jnp.take_along_axis(seqs_BXT, index_Bk[..., None], axis=1)


def beam_search(step_fn, state, batch_size: int, *, beam_size: int, max_len: int, eos_id: int,
                alpha: float = 0.0, pad_id: int = 0, first_logp_BV=None, gather_fn=take_rows,
                early_stop: bool = True):
  """The best hypothesis per batch row, tokens [B, T] int32 (EOS included if emitted, PAD after it),
  and its length-penalized log-probability [B] float32. Traceable: call it inside jax.jit.

  step_fn(state, tokens_N, t) -> (logp_NV, state): log-probabilities (or logits) of the token at
  step t given each row's token of step t - 1 (pad_id at t == 0: step_fn feeds its own start token,
  e.g. BOS). first_logp_BV: the step 0 distribution (e.g. from a prompt forward pass); step_fn is then
  first called at t == 1. gather_fn(state, index_N) -> state: moves row index_N[n] to row n after
  each step (default: axis 0 of every array; caches with the batch axis elsewhere need their own).

  A hypothesis ends at its first EOS, or at max_len; its length counts the EOS. PAD is never chosen.
  early_stop: stop once no alive beam can beat the worst of E finished ones (the result is the same).
  """
  B, E, K = batch_size, beam_size, 2 * beam_size

  def expand(carry, logp_BEV):
    """Extends every alive beam by every token; EOS candidates join the finished pool."""
    t, alive_seqs_BET, alive_logp_BE, finished_seqs_BET, finished_scores_BE, state = carry
    V = logp_BEV.shape[-1]
    logp_BEV = jax.nn.log_softmax(logp_BEV.astype(jnp.float32)).at[..., pad_id].set(-jnp.inf)
    # 2E candidates: at most E end in EOS (one per beam), so E alive ones always remain.
    cand_logp_BK, cand_BK = jax.lax.top_k((alive_logp_BE[..., None] + logp_BEV).reshape(B, E * V), K)
    beam_BK, token_BK = cand_BK // V, cand_BK % V
    cand_seqs_BKT = jnp.take_along_axis(alive_seqs_BET, beam_BK[..., None], axis=1)
    cand_seqs_BKT = jax.lax.dynamic_update_slice_in_dim(cand_seqs_BKT, token_BK[..., None], t, axis=2)
    eos_BK = token_BK == eos_id
    alive_logp_BE, alive_BE = jax.lax.top_k(jnp.where(eos_BK, -jnp.inf, cand_logp_BK), E)
    alive_seqs_BET = jnp.take_along_axis(cand_seqs_BKT, alive_BE[..., None], axis=1)
    source_BE = jnp.take_along_axis(beam_BK, alive_BE, axis=1)
    state = gather_fn(state, (jnp.arange(B)[:, None] * E + source_BE).reshape(B * E))
    new_scores_BK = jnp.where(eos_BK, cand_logp_BK / _length_penalty(t + 1, alpha), -jnp.inf)
    finished_scores_BE, finished_seqs_BET = _top(
        jnp.concatenate([finished_scores_BE, new_scores_BK], axis=1),
        jnp.concatenate([finished_seqs_BET, cand_seqs_BKT], axis=1), E)
    return t + 1, alive_seqs_BET, alive_logp_BE, finished_seqs_BET, finished_scores_BE, state

  def cond(carry):
    t, _, alive_logp_BE, _, finished_scores_BE, _ = carry
    # Log-probabilities only fall as a beam grows, so the largest penalty bounds what it can reach.
    best_alive_B = jnp.max(alive_logp_BE, axis=1) / jnp.maximum(1.0, _length_penalty(max_len, alpha))
    worst_finished_B = jnp.min(finished_scores_BE, axis=1)  # -inf until E hypotheses have finished
    return (t < max_len) & ~(early_stop & jnp.all(worst_finished_B > best_alive_B))

  def body(carry):
    t, alive_seqs_BET = carry[:2]
    previous_N = jnp.where(t == 0, pad_id, jax.lax.dynamic_index_in_dim(
        alive_seqs_BET, jnp.maximum(t - 1, 0), axis=2, keepdims=False)).reshape(B * E)
    logp_NV, state = step_fn(carry[-1], previous_N, t)
    return expand((*carry[:-1], state), logp_NV.reshape(B, E, -1))

  # Only beam 0 is alive at the start, so the first step's candidates are distinct.
  alive_logp_BE = jnp.tile(jnp.where(jnp.arange(E) == 0, 0.0, -jnp.inf), (B, 1))
  seqs_BET = jnp.full((B, E, max_len), pad_id, jnp.int32)
  carry = (jnp.int32(0), seqs_BET, alive_logp_BE, seqs_BET, jnp.full((B, E), -jnp.inf), state)
  if first_logp_BV is not None:
    carry = expand(carry, jnp.broadcast_to(first_logp_BV[:, None], (B, E, first_logp_BV.shape[-1])))
  t, alive_seqs_BET, alive_logp_BE, finished_seqs_BET, finished_scores_BE, _ = jax.lax.while_loop(
      cond, body, carry)
  # Alive beams that reached max_len end there; before it (an early stop) none can win.
  cut_scores_BE = jnp.where(t == max_len, alive_logp_BE / _length_penalty(max_len, alpha), -jnp.inf)
  scores_B1, seqs_B1T = _top(jnp.concatenate([finished_scores_BE, cut_scores_BE], axis=1),
                             jnp.concatenate([finished_seqs_BET, alive_seqs_BET], axis=1), 1)
  return seqs_B1T[:, 0], scores_B1[:, 0]
