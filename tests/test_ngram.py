"""Tests of the Kneser-Ney n-gram baseline: hand-computed probabilities, normalization, packed evaluation."""

import numpy as np
import pytest

from lmlab.data import packing
from lmlab.objectives import causal
from lmlab.models import ngram

# Toy corpus over V = 8 ids: 0 PAD, 1 UNK, 2 BOS, 3 EOS, then words a b c d = 4 5 6 7.
V = 8
TOY = [np.array(d, np.int32) for d in ([2, 4, 5, 6, 3], [2, 4, 5, 7, 3], [2, 5, 6, 3])]

# Unigram level (continuation counts), shared by the bigram and trigram models: distinct left
# neighbours within documents: EOS<-{c,d} 2, a<-{BOS} 1, b<-{BOS,a} 2, c<-{b} 1, d<-{b} 1; total 7.
# Count-of-counts n1 = 3, n2 = 2, n3 = 0 are degenerate: one discount 3 / (3 + 2*2) = 3/7.
# Mass for the uniform: gamma = 5 grams * 3/7 / 7 = 15/49, spread over 8 ids.
P1 = {w: (a - 3 / 7) / 7 + (15 / 49) / 8 for w, a in {3: 2, 4: 1, 5: 2, 6: 1, 7: 1}.items()}
P1.update({w: (15 / 49) / 8 for w in (0, 1, 2)})  # PAD, UNK, BOS: never after anything.


def test_toy_unigram_level_matches_hand_values():
  assert sum(P1.values()) == pytest.approx(1.0, abs=1e-12)
  model = ngram.KneserNey.fit(TOY, V, order=2)
  # An empty context (or one never seen) uses the unigram level alone.
  np.testing.assert_allclose(model.probabilities([]), [P1[w] for w in range(V)], rtol=1e-12)


def test_toy_bigram_matches_hand_values():
  model = ngram.KneserNey.fit(TOY, V, order=2)
  # Top level, raw bigram counts: BOS a 2, BOS b 1, a b 2, b c 2, b d 1, c EOS 2, d EOS 1.
  # n1 = 3, n2 = 4, n3 = 0: degenerate, so one discount D = 3 / (3 + 2*4) = 3/11.
  d = 3 / 11
  # Context b: b c 2, b d 1, total 3; backoff weight gamma(b) = 2 grams * D / 3.
  gamma_b = 2 * d / 3
  assert model.probabilities([5])[6] == pytest.approx((2 - d) / 3 + gamma_b * P1[6], rel=1e-12)  # seen
  assert model.probabilities([5])[4] == pytest.approx(gamma_b * P1[4], rel=1e-12)  # unseen, seen context
  assert model.probabilities([3])[5] == pytest.approx(P1[5], rel=1e-12)  # EOS never a context: unigram
  # Only the last N-1 = 1 context token counts.
  np.testing.assert_allclose(model.probabilities([7, 4, 5]), model.probabilities([5]), rtol=1e-12)


def test_toy_trigram_matches_hand_values():
  model = ngram.KneserNey.fit(TOY, V, order=3)
  # Top level, raw trigram counts: BOS a b 2, a b c 1, b c EOS 2, a b d 1, b d EOS 1, BOS b c 1.
  # n1 = 4, n2 = 2: one discount D3 = 4 / (4 + 2*2) = 1/2.
  d3 = 1 / 2
  # Bigram level: distinct left neighbours, plus one per document start (BOS-initial bigrams keep raw
  # counts): BOS a 2 (starts), BOS b 1 (start), a b 1 (<-BOS), b c 2 (<-a, <-BOS), b d 1, c EOS 1,
  # d EOS 1. n1 = 5, n2 = 2: D2 = 5 / (5 + 2*2) = 5/9.
  d2 = 5 / 9
  # Context b at the bigram level: b c 2, b d 1, total 3, gamma = 2 * D2 / 3.
  p2_c_after_b = (2 - d2) / 3 + (2 * d2 / 3) * P1[6]
  p2_eos_after_b = (2 * d2 / 3) * P1[3]
  # Context (a, b) at the top: a b c 1, a b d 1, total 2, gamma = 2 * D3 / 2.
  gamma_ab = 2 * d3 / 2
  assert model.probabilities([4, 5])[6] == pytest.approx((1 - d3) / 2 + gamma_ab * p2_c_after_b, rel=1e-12)
  assert model.probabilities([4, 5])[3] == pytest.approx(gamma_ab * p2_eos_after_b, rel=1e-12)
  # Context (d, b) never seen: backs off fully to the bigram level.
  assert model.probabilities([7, 5])[6] == pytest.approx(p2_c_after_b, rel=1e-12)
  # Document start, context [BOS] only: bigram level with raw counts BOS a 2, BOS b 1.
  assert model.probabilities([2])[4] == pytest.approx((2 - d2) / 3 + (2 * d2 / 3) * P1[4], rel=1e-12)


def test_modified_discounts_from_count_of_counts():
  # n1 = 10, n2 = 5, n3 = 3, n4 = 2: Y = 10 / (10 + 2*5) = 1/2, D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2,
  # D3+ = 3 - 4Y n4/n3.
  counts = np.repeat([1, 2, 3, 4, 9], [10, 5, 3, 2, 1])
  np.testing.assert_allclose(ngram._discounts(counts), [0, 0.5, 2 - 0.9, 3 - 4 / 3])
  # No count of 3 or 4: the single discount n1 / (n1 + 2 n2) = 10/20.
  np.testing.assert_allclose(ngram._discounts(np.repeat([1, 2], [10, 5])), [0, 0.5, 0.5, 0.5])


def markov_docs(rng, num_docs, vocab_size=12, length=60):
  """Documents [BOS] + ids + [EOS] from a fixed, seeded second-order Markov chain over ids 4..V-1."""
  words = vocab_size - 4
  table = np.random.default_rng(1).dirichlet(np.full(words, 0.1), size=(words, words))
  docs = []
  for _ in range(num_docs):
    ids = list(rng.integers(0, words, 2))
    for _ in range(length - 2):
      ids.append(rng.choice(words, p=table[ids[-2], ids[-1]]))
    docs.append(np.array([2] + [i + 4 for i in ids] + [3], np.int32))
  return docs


@pytest.fixture(scope="module")
def train_docs():
  return markov_docs(np.random.default_rng(0), 150)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_probabilities_sum_to_one_and_are_positive(train_docs, order):
  model = ngram.KneserNey.fit(train_docs, 12, order)
  rng = np.random.default_rng(order)
  contexts = [train_docs[0][:k] for k in range(5)]  # seen, including document starts
  contexts += [rng.integers(0, 12, rng.integers(0, 5)) for _ in range(40)]  # mostly unseen
  for context in contexts:
    p = model.probabilities(context)
    assert p.shape == (12,)
    assert abs(p.sum() - 1) < 1e-9
    assert np.all(p > 0)


@pytest.mark.parametrize("order", [1, 3])
def test_evaluate_packed_matches_slow_reference(train_docs, order):
  model = ngram.KneserNey.fit(train_docs, 12, order)
  eval_docs = markov_docs(np.random.default_rng(5), 6) + [np.array([2, 3], np.int32)]
  packed = packing.pack_documents(eval_docs, 16)  # 16 columns: documents run across rows
  result = model.evaluate_packed(packed)
  _, weights_RL = causal.next_token_targets(packed["tokens"], packed["segment_ids"])
  tokens, segments = packed["tokens"], packed["segment_ids"]
  nll = []
  for r in range(tokens.shape[0]):
    for t in range(tokens.shape[1] - 1):
      if segments[r, t] == 0 or segments[r, t + 1] != segments[r, t]:
        continue
      start = max(t + 1 - (order - 1), 0)
      context = [tokens[r, s] for s in range(start, t + 1) if segments[r, s] == segments[r, t]]
      nll.append(-np.log(model.probabilities(context)[tokens[r, t + 1]]))
  assert result["tokens"] == len(nll) == int(np.asarray(weights_RL).sum())
  assert result["loss"] == pytest.approx(np.mean(nll), rel=1e-10)
  assert result["perplexity"] == pytest.approx(np.exp(np.mean(nll)), rel=1e-10)


def test_higher_order_lowers_heldout_perplexity(train_docs):
  packed = packing.pack_documents(markov_docs(np.random.default_rng(7), 30), 64)
  ppl = {order: ngram.KneserNey.fit(train_docs, 12, order).evaluate_packed(packed)["perplexity"]
         for order in (1, 2, 3)}
  # The chain is second order: each added token of context must help.
  assert ppl[3] < ppl[2] < ppl[1]


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="order >= 1"):
    ngram.KneserNey.fit(TOY, V, order=0)
  with pytest.raises(ValueError, match="outside"):
    ngram.KneserNey.fit(TOY + [np.array([2, 8, 3])], V, order=2)
  with pytest.raises(ValueError, match="outside"):
    ngram.KneserNey.fit([np.array([2, -1, 3])], V, order=2)
  with pytest.raises(ValueError, match="No training targets"):
    ngram.KneserNey.fit([], V, order=2)
  with pytest.raises(ValueError, match="No training targets"):
    ngram.KneserNey.fit([np.array([2])], V, order=2)
  with pytest.raises(ValueError, match="2 \\*\\* 63"):
    ngram.KneserNey.fit(TOY, 2 ** 20, order=4)
  model = ngram.KneserNey.fit(TOY, V, order=2)
  with pytest.raises(ValueError, match="outside"):
    model.log_prob(np.array([[4]]), np.array([8]))
  with pytest.raises(ValueError, match="outside"):
    model.probabilities([9])
