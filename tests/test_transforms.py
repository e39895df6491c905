"""Tests of the per-objective batch transforms: statistics on large random batches, layouts, round trips,
determinism and errors."""

import numpy as np
import pytest

from lmlab.data import packing
from lmlab.objectives import causal, masked, span
from lmlab.data.tokenizer import (BOS_ID, CLS_ID, EOS_ID, FIRST_SENTINEL_ID, MASK_ID, SEP_ID,
                                  num_special_ids)

VOCAB = 1000
NUM_SENTINELS = 100
NUM_SPECIAL = num_special_ids(NUM_SENTINELS)  # 107
MLM = dict(vocab_size=VOCAB, num_special=NUM_SPECIAL)


def random_docs(rng, num_docs, max_len=300, specials=True):
  """[BOS] ids [EOS] documents; a few ids inside are special (sentinels, [SEP]) so selection must skip them."""
  docs = []
  for _ in range(num_docs):
    ids = rng.integers(NUM_SPECIAL, VOCAB, size=rng.integers(1, max_len))
    if specials:
      ids[rng.random(ids.size) < 0.03] = rng.choice([SEP_ID, FIRST_SENTINEL_ID, FIRST_SENTINEL_ID + 5])
    docs.append(np.concatenate([[BOS_ID], ids, [EOS_ID]]).astype(np.int32))
  return docs


def packed_batch(seed=0, rows=256, seq_len=128, padded_rows=16):
  """Packed rows; the last `padded_rows` are cut short (as the last row of a split) or all padding."""
  rng = np.random.default_rng(seed)
  packed = packing.pack_documents(random_docs(rng, 3 * rows * seq_len // 150), seq_len)
  batch = {key: packed[key][:rows].copy() for key in packing.KEYS}
  assert batch["tokens"].shape == (rows, seq_len)
  for r in range(rows - padded_rows, rows):
    cut = 0 if r == rows - 1 else rng.integers(1, seq_len)
    for key in packing.KEYS:
      batch[key][r, cut:] = 0
  return batch


def assert_matches_spec(out, spec):
  assert set(out) == set(spec)
  for key, (shape, dtype) in spec.items():
    assert out[key].shape == shape and out[key].dtype == dtype, (key, out[key].shape, out[key].dtype)


@pytest.fixture(scope="module")
def batch():
  return packed_batch()


def rng(seed=0):
  return np.random.default_rng([seed, 7, 0])


# Masked LM


def test_mask_tokens_statistics(batch):
  out = masked.mask_tokens(batch, rng(), **MLM)
  assert_matches_spec(out, masked.mask_tokens_spec(256, 128))
  tokens, corrupted, selected = batch["tokens"], out["tokens"], out["weights"] > 0
  maskable = (batch["segment_ids"] > 0) & (tokens >= NUM_SPECIAL)
  # A fixed count per row (BERT: at least one), never padding or special ids.
  num_maskable = maskable.sum(1)
  expected = np.minimum(np.maximum(np.round(0.15 * num_maskable), 1), num_maskable)
  np.testing.assert_array_equal(selected.sum(1), expected)
  assert not np.any(selected & ~maskable)
  assert abs(selected.sum() / maskable.sum() - 0.15) < 0.005
  # 80 / 10 / 10 among the selected; random ids are never special; the rest is untouched.
  n = selected.sum()
  to_mask = selected & (corrupted == MASK_ID)
  kept = selected & (corrupted == tokens)
  to_random = selected & ~to_mask & ~kept
  assert abs(to_mask.sum() / n - 0.8) < 0.03
  assert abs(kept.sum() / n - 0.1) < 0.02  # includes the rare random id equal to the original
  assert abs(to_random.sum() / n - 0.1) < 0.02
  assert np.all((corrupted[to_random] >= NUM_SPECIAL) & (corrupted[to_random] < VOCAB))
  np.testing.assert_array_equal(corrupted[~selected], tokens[~selected])
  np.testing.assert_array_equal(out["targets"], tokens)
  # The weights by input kind (the evaluation's loss split) partition the selected positions.
  np.testing.assert_array_equal(out["mask_weights"] > 0, to_mask)
  np.testing.assert_array_equal(out["mask_weights"] + out["random_weights"] + out["kept_weights"], out["weights"])
  assert np.all(corrupted[out["kept_weights"] > 0] == tokens[out["kept_weights"] > 0])
  assert np.all(out["random_weights"][to_random] == 1)  # a random id equal to the original still counts
  for key in ("segment_ids", "positions"):
    np.testing.assert_array_equal(out[key], batch[key])
  # Selection is spread over the row, not biased to its start.
  cols = np.nonzero(selected)[1]
  assert abs(cols.mean() - np.nonzero(maskable)[1].mean()) < 3


def words_of_row(tokens, segments, maskable, word_start_V):
  """Reference word segmentation, one token at a time: lists of column indices."""
  words, current = [], None
  for col in range(tokens.size):
    if not maskable[col]:
      current = None
      continue
    if current is None or word_start_V[tokens[col]] or segments[col] != segments[col - 1]:
      current = []
      words.append(current)
    current.append(col)
  return words


def test_whole_word_masking_selects_whole_words(batch):
  word_start_V = np.random.default_rng(1).random(VOCAB) < 0.4  # words of ~2.5 pieces
  out = masked.mask_tokens(batch, rng(), whole_word=True, word_start_V=word_start_V, **MLM)
  selected = out["weights"] > 0
  maskable = (batch["segment_ids"] > 0) & (batch["tokens"] >= NUM_SPECIAL)
  assert not np.any(selected & ~maskable)
  num_words = 0
  for r in range(batch["tokens"].shape[0]):
    for word in words_of_row(batch["tokens"][r], batch["segment_ids"][r], maskable[r], word_start_V):
      assert selected[r, word].all() or not selected[r, word].any(), (r, word)
      num_words += selected[r, word[0]]
  assert num_words > 1000
  # BERT's rule: never more than the count; skipped long words make it a little lower on average.
  num_maskable = maskable.sum(1)
  expected = np.minimum(np.maximum(np.round(0.15 * num_maskable), 1), num_maskable)
  assert np.all(selected.sum(1) <= expected)
  assert 0.14 < selected.sum() / maskable.sum() <= 0.15
  # Per-piece 80 / 10 / 10.
  assert abs((out["tokens"][selected] == MASK_ID).mean() - 0.8) < 0.03


def test_mask_tokens_rejects_impossible_settings(batch):
  for rate in (0.0, 1.0, 1.5, -0.1):
    with pytest.raises(ValueError, match="mask_rate"):
      masked.mask_tokens(batch, rng(), mask_rate=rate, **MLM)
  with pytest.raises(ValueError, match="replace_with_mask"):
    masked.mask_tokens(batch, rng(), replace_with_mask=0.9, replace_random=0.2, **MLM)
  with pytest.raises(ValueError, match="word_start_V"):
    masked.mask_tokens(batch, rng(), whole_word=True, **MLM)
  with pytest.raises(ValueError, match="vocab_size"):
    masked.mask_tokens(batch, rng(), vocab_size=NUM_SPECIAL, num_special=NUM_SPECIAL)


# Next-sentence prediction


@pytest.fixture(scope="module")
def pairs():
  docs = random_docs(np.random.default_rng(2), 400, max_len=400, specials=False)
  return docs, masked.pair_rows(docs, seq_len=128)


def test_pair_rows_are_consecutive_chunks(pairs):
  docs, rows = pairs
  half = (128 - 3) // 2
  assert rows["first"].shape[1] == rows["second"].shape[1] == half
  expected = []
  for d, doc in enumerate(docs):
    ids = doc[1:-1]
    if ids.size < 2:
      continue
    if ids.size <= half:
      expected.append((d, ids[:ids.size // 2], ids[ids.size // 2:]))
    else:
      chunks = [ids[i:i + half] for i in range(0, ids.size, half)]
      expected += [(d, a, b) for a, b in zip(chunks[:-1], chunks[1:])]
  assert len(expected) == rows["doc_id"].size
  for r, (d, a, b) in enumerate(expected):
    assert rows["doc_id"][r] == d
    assert rows["first_len"][r] == a.size and rows["second_len"][r] == b.size
    np.testing.assert_array_equal(rows["first"][r, :a.size], a)
    np.testing.assert_array_equal(rows["second"][r, :b.size], b)
    assert not rows["first"][r, a.size:].any() and not rows["second"][r, b.size:].any()


def nsp_batch(rows, size=512, seed=3):
  index = np.random.default_rng(seed).choice(rows["doc_id"].size, size, replace=False)
  return {key: value[index] for key, value in rows.items()}


def test_next_sentence_labels_and_layout(pairs):
  _, rows = pairs
  batch = nsp_batch(rows)
  out = masked.next_sentence(batch, rng(), seq_len=128)
  assert_matches_spec(out, masked.next_sentence_spec(512, 128))
  labels = out["nsp_labels"]
  assert abs(labels.mean() - 0.5) < 0.08
  seconds = {(int(batch["doc_id"][j]), tuple(batch["second"][j, :batch["second_len"][j]])) for j in range(512)}
  for i in range(512):
    la = batch["first_len"][i]
    tokens = out["tokens"][i]
    n = int(out["segment_ids"][i].sum())
    assert tokens[0] == CLS_ID and tokens[la + 1] == SEP_ID and tokens[n - 1] == SEP_ID
    np.testing.assert_array_equal(tokens[1:la + 1], batch["first"][i, :la])
    b = tuple(tokens[la + 2:n - 1])
    if labels[i] == 0:  # IsNext: the true continuation
      assert b == tuple(batch["second"][i, :batch["second_len"][i]])
    else:  # NotNext: another row's B from another document
      assert any(doc != batch["doc_id"][i] and b == second for doc, second in seconds)
    assert not tokens[n:].any()
    np.testing.assert_array_equal(out["token_types"][i, :n], np.arange(n) >= la + 2)
    assert not out["token_types"][i, n:].any()
    np.testing.assert_array_equal(out["segment_ids"][i], np.arange(128) < n)
    np.testing.assert_array_equal(out["positions"][i], np.where(np.arange(128) < n, np.arange(128), 0))
  assert np.all(out["nsp_weights"] == 1.0)


def test_next_sentence_padding_rows_and_errors(pairs):
  _, rows = pairs
  batch = nsp_batch(rows, size=8)
  for value in batch.values():
    value[-2:] = 0  # eval batch padding
  out = masked.next_sentence(batch, rng(), seq_len=127)
  for key in ("tokens", "token_types", "segment_ids", "positions", "nsp_labels", "nsp_weights"):
    assert not out[key][-2:].any(), key
  np.testing.assert_array_equal(out["nsp_weights"], [1] * 6 + [0] * 2)
  with pytest.raises(ValueError, match="seq_len"):
    masked.next_sentence(batch, rng(), seq_len=126)
  with pytest.raises(ValueError, match="seq_len"):
    masked.pair_rows([], seq_len=4)


def test_mlm_nsp_never_masks_cls_sep(pairs):
  _, rows = pairs
  out = masked.mlm_nsp(nsp_batch(rows), rng(), seq_len=128, **MLM)
  assert_matches_spec(out, masked.mlm_nsp_spec(512, 128))
  selected = out["weights"] > 0
  assert not np.any(selected & np.isin(out["targets"], [CLS_ID, SEP_ID]))
  assert not np.any(selected & (out["segment_ids"] == 0))
  real = (out["segment_ids"] > 0) & (out["targets"] >= NUM_SPECIAL)
  assert abs(selected.sum() / real.sum() - 0.15) < 0.005


# Span corruption


def test_span_corruption_lengths_match_t5():
  assert span.span_corruption_lengths(512, 0.15, 3.0) == (568, 114)  # T5's default task
  for inputs_length in (16, 64, 128, 512):
    tokens_length, targets_length = span.span_corruption_lengths(inputs_length)
    out = span.span_corruption(
        full_rows(tokens_length, rows=4), rng(), inputs_length=inputs_length, targets_length=targets_length,
        num_sentinels=NUM_SENTINELS)
    # Full rows fill inputs and targets exactly, both ending with EOS.
    np.testing.assert_array_equal(out["encoder_tokens"][:, -1], EOS_ID)
    np.testing.assert_array_equal(out["targets"][:, -1], EOS_ID)
    assert out["encoder_segment_ids"].all() and out["weights"].all()


def noise_span_lengths(mask):
  edges = np.nonzero(np.diff(np.pad(mask.astype(int), 1)))[0]
  return edges[1::2] - edges[::2]


def test_random_spans_noise_mask_statistics():
  gen = np.random.default_rng(4)
  masks = np.stack([span.random_spans_noise_mask(141, 0.15, 3.0, gen) for _ in range(300)])
  assert masks.shape == (300, 141) and masks.dtype == bool
  np.testing.assert_array_equal(masks.sum(1), round(141 * 0.15))  # 21 noise tokens
  starts = masks & ~np.pad(masks, ((0, 0), (1, 0)))[:, :-1]
  np.testing.assert_array_equal(starts.sum(1), 7)  # round(21 / 3) spans: mean span length 3
  assert not masks[:, 0].any() and masks[:, -1].all()  # non-noise first, noise last
  # Span lengths vary (a random segmentation, not fixed spans of 3), and every non-first column can be noise.
  lengths = np.concatenate([noise_span_lengths(m) for m in masks])
  assert lengths.size == 300 * 7 and lengths.mean() == 3.0 and lengths.min() == 1 and lengths.max() >= 8
  assert masks[:, 1:].any(0).all()
  # Degenerate lengths as T5: at least one noise and one kept token; a single token is never noise.
  assert span.random_spans_noise_mask(2, 0.15, 3.0, gen).tolist() == [False, True]
  assert span.random_spans_noise_mask(1, 0.15, 3.0, gen).tolist() == [False]


def full_rows(length, rows=256, seed=5):
  tokens = np.random.default_rng(seed).integers(NUM_SPECIAL, VOCAB, (rows, length)).astype(np.int32)
  return {"tokens": tokens, "segment_ids": np.ones_like(tokens), "positions": np.tile(np.arange(length), (rows, 1))}


def uncorrupt(encoder, targets):
  """Merges the encoder tokens and decoder targets back into the raw row, by sentinel."""
  spans, current = {}, None
  for t in targets[:list(targets).index(EOS_ID)]:
    if FIRST_SENTINEL_ID <= t < NUM_SPECIAL:
      current = spans.setdefault(t, [])
    else:
      current.append(t)
  out = []
  for t in encoder[:list(encoder).index(EOS_ID)]:
    out += spans.pop(t) if FIRST_SENTINEL_ID <= t < NUM_SPECIAL else [t]
  assert not spans
  return out


def span_stats(batch, out):
  """(noise tokens, noise spans, real tokens) over the batch, read off the targets."""
  dec = out["targets"]
  sentinel = (dec >= FIRST_SENTINEL_ID) & (dec < NUM_SPECIAL)
  noise = (out["weights"] > 0) & ~sentinel & (dec != EOS_ID)
  return noise.sum(), sentinel.sum(), (batch["segment_ids"] > 0).sum()


def test_span_corruption_round_trip_and_statistics():
  inputs_length = 128
  tokens_length, targets_length = span.span_corruption_lengths(inputs_length)
  batch = full_rows(tokens_length)
  # Partly padded rows (the last row of a split), one of each short length, and an all-padding row.
  for r, n in enumerate([1, 2, 3, 5, 17, 60, 140, 0]):
    for key in batch:
      batch[key][r, n:] = 0
  out = span.span_corruption(batch, rng(), inputs_length=inputs_length, targets_length=targets_length,
                                   num_sentinels=NUM_SENTINELS)
  assert_matches_spec(out, span.span_corruption_spec(256, inputs_length, targets_length))
  for r in range(256):
    real = batch["segment_ids"][r] > 0
    enc_n, dec_n = out["encoder_segment_ids"][r].sum(), out["decoder_segment_ids"][r].sum()
    if not real.any():
      assert not any(v[r].any() for v in out.values())
      continue
    assert out["encoder_tokens"][r, enc_n - 1] == EOS_ID and out["targets"][r, dec_n - 1] == EOS_ID
    assert not out["encoder_tokens"][r, enc_n:].any() and not out["targets"][r, dec_n:].any()
    assert uncorrupt(out["encoder_tokens"][r], out["targets"][r]) == batch["tokens"][r, real].tolist()
    # Sentinels in order from <extra_id_0>, the same ones in inputs and targets.
    enc, dec = out["encoder_tokens"][r, :enc_n], out["targets"][r, :dec_n]
    sentinels = enc[(enc >= FIRST_SENTINEL_ID) & (enc < NUM_SPECIAL)]
    np.testing.assert_array_equal(sentinels, FIRST_SENTINEL_ID + np.arange(sentinels.size))
    np.testing.assert_array_equal(dec[(dec >= FIRST_SENTINEL_ID) & (dec < NUM_SPECIAL)], sentinels)
    if real.sum() > 1:
      assert dec[0] == FIRST_SENTINEL_ID
    np.testing.assert_array_equal(out["encoder_positions"][r, :enc_n], np.arange(enc_n))
    np.testing.assert_array_equal(out["decoder_positions"][r, :dec_n], np.arange(dec_n))
    np.testing.assert_array_equal(out["weights"][r], out["decoder_segment_ids"][r])
    np.testing.assert_array_equal(out["decoder_inputs"][r, :dec_n], np.concatenate([[BOS_ID], dec[:-1]]))
    assert not out["decoder_inputs"][r, dec_n:].any()
  # Full rows: exactly the computed lengths; noise density 0.15 and mean span length 3.
  full = slice(8, None)
  assert out["encoder_segment_ids"][full].sum(1).tolist() == [inputs_length] * 248
  assert out["decoder_segment_ids"][full].sum(1).tolist() == [targets_length] * 248
  noise, spans, real = span_stats({"segment_ids": batch["segment_ids"][full]},
                                  {key: value[full] for key, value in out.items()})
  assert abs(noise / real - 0.15) < 0.005
  assert abs(noise / spans - 3.0) < 0.05


def test_span_corruption_rejects_impossible_settings():
  tokens_length, targets_length = span.span_corruption_lengths(128)
  batch = full_rows(tokens_length, rows=2)
  kwargs = dict(inputs_length=128, targets_length=targets_length)
  assert span.max_noise_spans(tokens_length) == 7
  with pytest.raises(ValueError, match="num_sentinels"):
    span.span_corruption(batch, rng(), num_sentinels=6, **kwargs)
  with pytest.raises(ValueError, match="span_corruption_lengths"):
    span.span_corruption(full_rows(tokens_length + 5, rows=2), rng(), num_sentinels=100, **kwargs)
  with pytest.raises(ValueError, match="span_corruption_lengths"):
    span.span_corruption(batch, rng(), inputs_length=128, targets_length=targets_length - 1,
                               num_sentinels=100)
  for density in (0.0, 1.0):
    with pytest.raises(ValueError, match="noise_density"):
      span.span_corruption_lengths(128, noise_density=density)
  with pytest.raises(ValueError, match="mean_noise_span_length"):
    span.max_noise_spans(128, 0.15, 0.5)
  with pytest.raises(ValueError, match="inputs_length"):
    span.span_corruption_lengths(2)


# Decoder-only LM


def segments_of(row_segments):
  """(segment id, first column, length) of each segment in a row."""
  out = []
  for s in np.unique(row_segments[row_segments > 0]):
    cols = np.nonzero(row_segments == s)[0]
    out.append((s, cols[0], cols.size))
  return out


@pytest.mark.parametrize("split", ["random", 0.25])
def test_prefix_lm_weights_only_on_suffix_targets(batch, split):
  out = causal.prefix_lm(batch, rng(), split=split)
  assert_matches_spec(out, causal.lm_spec(256, 128))
  plain = causal.causal_lm(batch, rng())
  np.testing.assert_array_equal(out["targets"], plain["targets"])
  fractions = []
  for r in range(256):
    prefix, weights = out["prefix"][r], out["weights"][r] > 0
    for s, start, n in segments_of(batch["segment_ids"][r]):
      cols = np.arange(start, start + n)
      k = int(prefix[cols].sum())
      np.testing.assert_array_equal(prefix[cols], np.arange(n) < k)  # a prefix run
      if split == "random":
        assert 1 <= k <= max(n - 1, 1)
        if n >= 3:
          fractions.append((k - 1) / (n - 2))
      else:
        assert k == np.clip(round(0.25 * n), 1, max(n - 1, 1))
      # Weighted: the last prefix token and the suffix tokens whose next token is in the segment.
      expected = (np.arange(n) >= k - 1) & (np.arange(n) < n - 1)
      if start + n == 128:  # the last column's target is in the next row
        expected[-1] = False
      np.testing.assert_array_equal(weights[cols], expected, err_msg=f"row {r} segment {s}")
    assert not prefix[batch["segment_ids"][r] == 0].any() and not weights[batch["segment_ids"][r] == 0].any()
  if split == "random":
    assert abs(np.mean(fractions) - 0.5) < 0.05 and abs(np.std(fractions) - 12 ** -0.5) < 0.05  # uniform


def test_causal_lm_is_next_token_prediction_within_documents(batch):
  out = causal.causal_lm(batch, rng())
  assert_matches_spec(out, causal.lm_spec(256, 128))
  tokens, segments = batch["tokens"], batch["segment_ids"]
  np.testing.assert_array_equal(out["targets"][:, :-1], tokens[:, 1:])
  expected = np.zeros(tokens.shape, bool)
  expected[:, :-1] = (segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] > 0)
  np.testing.assert_array_equal(out["weights"], expected)
  assert not out["prefix"].any()


def test_prefix_lm_rejects_bad_split(batch):
  for split in ("half", 1.5, -0.1):
    with pytest.raises(ValueError, match="split"):
      causal.prefix_lm(batch, rng(), split=split)


# Determinism: batch k is a pure function of (seed, k)


def test_transforms_are_deterministic(batch, pairs):
  tokens_length, targets_length = span.span_corruption_lengths(64)
  word_start_V = np.arange(VOCAB) % 3 == 0
  cases = [
      (masked.mask_tokens, batch, MLM),
      (masked.mask_tokens, batch, dict(whole_word=True, word_start_V=word_start_V, **MLM)),
      (masked.mlm_nsp, nsp_batch(pairs[1], size=64), dict(seq_len=128, **MLM)),
      (span.span_corruption, full_rows(tokens_length, rows=64),
       dict(inputs_length=64, targets_length=targets_length, num_sentinels=NUM_SENTINELS)),
      (causal.prefix_lm, batch, {}),
  ]
  for fn, inputs, kwargs in cases:
    first = fn(inputs, np.random.default_rng([1, 5, 0]), **kwargs)
    again = fn(inputs, np.random.default_rng([1, 5, 0]), **kwargs)
    other = fn(inputs, np.random.default_rng([1, 6, 0]), **kwargs)
    assert all(np.array_equal(first[key], again[key]) for key in first), fn.__name__
    assert not all(np.array_equal(first[key], other[key]) for key in first), fn.__name__
