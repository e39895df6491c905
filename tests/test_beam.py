"""Beam search (decode/beam.py) on constructed step functions: log-probabilities looked up in a table
indexed by the whole prefix, so the exhaustive best hypothesis can be computed in Python."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.decode.beam import beam_search

PAD, EOS, V = 0, 3, 4  # tokens 1 and 2 are words


def code(prefix):
  """The table row of a prefix: its tokens as base-V digits after a leading 1 (the empty prefix is 1)."""
  return functools.reduce(lambda c, x: c * V + x, prefix, 1)


def tables(seed, B, T, eos_boost=0.0):
  """Random log-probabilities [B, V**T, V] of the next token after each prefix of length < T."""
  logits = np.random.default_rng(seed).normal(0.0, 2.0, (B, V ** T, V))
  logits[..., EOS] += eos_boost
  return jax.nn.log_softmax(jnp.asarray(logits, jnp.float32))


def penalized(logp_CV, seq, alpha):
  logp = sum(float(logp_CV[code(seq[:i]), x]) for i, x in enumerate(seq))
  return logp / ((5.0 + len(seq)) / 6.0) ** alpha


def hypotheses(T):
  """Every sequence beam search may return: words up to the first EOS, or T words; never PAD."""
  for n in range(T + 1):
    for words in itertools.product((1, 2), repeat=n):
      if n < T:
        yield words + (EOS,)
      if n == T:
        yield words


def exhaustive(logp_CV, T, alpha):
  best = max(hypotheses(T), key=lambda seq: penalized(logp_CV, seq, alpha))
  return list(best) + [PAD] * (T - len(best)), penalized(logp_CV, best, alpha)


def code_step(logp_BCV, E, garbage_at_0=False):
  """State: each row's prefix code [N], reordered by the default gather_fn."""
  def step(code_N, tokens_N, t):
    code_N = jnp.where(t == 0, code_N + garbage_at_0, code_N * V + tokens_N)
    logp_NV = logp_BCV[jnp.arange(code_N.shape[0]) // E, code_N]
    return jnp.where((t == 0) & garbage_at_0, -logp_NV, logp_NV), code_N
  return step


def history_step(logp_BCV, E, T):
  """State: each row's tokens so far [T, N] (batch on axis 1, as some caches have it)."""
  def step(history_TN, tokens_N, t):
    history_TN = jnp.where(t == 0, history_TN, history_TN.at[t - 1].set(tokens_N))
    code_N = jnp.ones_like(tokens_N)
    for i in range(T):
      code_N = jnp.where(i < t, code_N * V + history_TN[i], code_N)
    return logp_BCV[jnp.arange(code_N.shape[0]) // E, code_N], history_TN
  return step


@functools.partial(jax.jit, static_argnames=("E", "T", "history", "first", "early_stop"))
def search(logp_BCV, alpha, *, E, T, history=False, first=False, early_stop=True):
  B = logp_BCV.shape[0]
  kw = dict(beam_size=E, max_len=T, eos_id=EOS, alpha=alpha, pad_id=PAD, early_stop=early_stop)
  if history:
    return beam_search(history_step(logp_BCV, E, T), jnp.zeros((T, B * E), jnp.int32), B,
                       gather_fn=lambda h, index_N: jnp.take(h, index_N, axis=1), **kw)
  # With first_logp_BV, a step_fn that is called at t == 0 corrupts its state and its output.
  return beam_search(code_step(logp_BCV, E, garbage_at_0=first), jnp.ones((B * E,), jnp.int32), B,
                     first_logp_BV=logp_BCV[:, code(())] if first else None, **kw)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_is_exhaustive_search(alpha):
  """With more beams than hypotheses (15), each row's result is the exhaustive argmax of the penalized
  score, and the score is that maximum, so the history state was reordered with its beam."""
  T, B = 3, 2
  logp_BCV = tables(0, B, T)
  seqs_BT, scores_B = search(logp_BCV, alpha, E=V ** T, T=T, history=True)
  for b in range(B):
    best, score = exhaustive(logp_BCV[b], T, alpha)
    assert seqs_BT[b].tolist() == best
    np.testing.assert_allclose(scores_B[b], score, rtol=1e-5)
  # Batch rows are independent: each alone gives the same.
  for b in range(B):
    seqs_1T, scores_1 = search(logp_BCV[b:b + 1], alpha, E=V ** T, T=T, history=True)
    assert seqs_1T[0].tolist() == seqs_BT[b].tolist() and scores_1[0] == scores_B[b]


def old_beam_search(logp_CV, E, T, alpha):
  """seq2seq.py's rule before beam.py: one top-E by raw log-probability over alive and finished beams
  (a finished beam extends by PAD at no cost), then the best length-penalized of the last E."""
  beams = [((), 0.0)]
  for _ in range(T):
    candidates = []
    for seq, logp in beams:
      if seq and seq[-1] == EOS:
        candidates.append((seq, logp))
      else:
        candidates += [(seq + (x,), logp + float(logp_CV[code(seq), x])) for x in (1, 2, EOS)]
    beams = sorted(candidates, key=lambda c: -c[1])[:E]
  return list(max(beams, key=lambda c: penalized(logp_CV, c[0], alpha))[0])


def constant_table(T, probs_by_length):
  """Log-probabilities [1, V**T, V] that depend only on the prefix length (the last entry beyond)."""
  logp_CV = np.zeros((V ** T, V))
  for prefix in itertools.chain.from_iterable(itertools.product(range(V), repeat=n) for n in range(T)):
    logp_CV[code(prefix)] = np.log(probs_by_length[min(len(prefix), len(probs_by_length) - 1)])
  return jnp.asarray(logp_CV[None], jnp.float32)


def test_finished_hypothesis_survives_likelier_alive_beams():
  """[EOS] (log 0.15 = -1.90) beats every longer hypothesis even after the alpha = 2 penalty (the next
  is [1, EOS]: (log 0.42 + log 0.05) / (7/6)**2 = -2.84), but [1] and [2] (log 0.42, log 0.38) are
  likelier at t == 0: ranked with them by raw log-probability, it is dropped from 2 beams at once."""
  T, E, alpha = 4, 2, 2.0
  logp_BCV = constant_table(T, [[0.05, 0.42, 0.38, 0.15], [0.85, 0.06, 0.04, 0.05]])
  seqs_BT, scores_B = search(logp_BCV, alpha, E=E, T=T)
  assert seqs_BT[0].tolist() == [EOS, PAD, PAD, PAD] == exhaustive(logp_BCV[0], T, alpha)[0]
  np.testing.assert_allclose(scores_B[0], np.log(0.15), rtol=1e-6)
  assert old_beam_search(logp_BCV[0], E, T, alpha) == [1, 1, 1, 1]


def test_finished_pool_ranks_by_penalized_score():
  """One beam: [EOS] (log 0.3 = -1.20) finishes first, then [1, EOS] (log 0.5 + log 0.55 = -1.29 raw,
  -0.95 with alpha = 2). The pool keeps the penalized best, [1, EOS], not the raw best."""
  T, alpha = 3, 2.0
  logp_BCV = constant_table(T, [[0.05, 0.5, 0.15, 0.3], [0.05, 0.3, 0.1, 0.55], [0.9, 0.04, 0.03, 0.03]])
  seqs_BT, scores_B = search(logp_BCV, alpha, E=1, T=T)
  assert seqs_BT[0].tolist() == [1, EOS, PAD] == exhaustive(logp_BCV[0], T, alpha)[0]
  np.testing.assert_allclose(scores_B[0], np.log(0.5 * 0.55) / (7 / 6) ** 2, rtol=1e-6)


def test_unfinished_hypothesis_wins_at_max_len():
  """One beam, alpha = 2: [EOS] (log 0.3 = -1.20) finishes first; the alive [1, 1] already has a lower
  raw log-probability (log 0.05 = -3.00), so a bound without the penalty would stop there, but cut at
  max_len = 6 (probability 0.97 per word after it) it scores (-3.00 + 4 log 0.97) / (11/6)**2 = -0.93."""
  T, alpha = 6, 2.0
  logp_BCV = constant_table(T, [[0.05, 0.5, 0.15, 0.3], [0.85, 0.1, 0.04, 0.01], [0.01, 0.97, 0.01, 0.01]])
  seqs_BT, scores_B = search(logp_BCV, alpha, E=1, T=T)
  assert seqs_BT[0].tolist() == [1] * T == exhaustive(logp_BCV[0], T, alpha)[0]
  np.testing.assert_allclose(scores_B[0], np.log(0.05 * 0.97 ** 4) / (11 / 6) ** 2, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_first_logp_replaces_step_zero(alpha):
  """first_logp_BV gives the same result as step_fn at t == 0, and step_fn is not called at t == 0
  (there it would corrupt its state and negate its log-probabilities)."""
  T, E = 4, 3
  logp_BCV = tables(1, 2, T)
  seqs_BT, scores_B = search(logp_BCV, alpha, E=E, T=T)
  first_seqs_BT, first_scores_B = search(logp_BCV, alpha, E=E, T=T, first=True)
  np.testing.assert_array_equal(first_seqs_BT, seqs_BT)
  np.testing.assert_allclose(first_scores_B, scores_B, rtol=1e-6)
  for b in range(2):
    np.testing.assert_allclose(scores_B[b], penalized(logp_BCV[b], [x for x in seqs_BT[b].tolist() if x],
                                                      alpha), rtol=1e-5)


def test_early_stop_gives_the_full_search_result():
  """Stopping once no alive beam can beat the worst finished one changes nothing, and does stop early
  (EOS is likely, so the finished pool fills within a few steps; alpha = 2 loosens the bound most)."""
  T, E, B = 6, 2, 2
  calls = []

  @functools.partial(jax.jit, static_argnames="early_stop")
  def run(logp_BCV, alpha, early_stop):
    def step(code_N, tokens_N, t):
      jax.debug.callback(lambda t: calls.append(int(t)), t)
      return code_step(logp_BCV, E)(code_N, tokens_N, t)
    return beam_search(step, jnp.ones((B * E,), jnp.int32), B, beam_size=E, max_len=T, eos_id=EOS,
                       alpha=alpha, pad_id=PAD, early_stop=early_stop)

  for seed, alpha in itertools.product(range(3), (0.0, 0.6, 2.0)):
    logp_BCV = tables(seed, B, T, eos_boost=1.5)
    full = run(logp_BCV, alpha, False)
    jax.effects_barrier()
    assert sorted(calls) == list(range(T))
    calls.clear()
    early = run(logp_BCV, alpha, True)
    jax.effects_barrier()
    assert len(calls) < T or alpha == 2.0
    calls.clear()
    np.testing.assert_array_equal(early[0], full[0])
    np.testing.assert_array_equal(early[1], full[1])
