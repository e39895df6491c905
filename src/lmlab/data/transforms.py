"""Per-objective batch transforms: packed rows in, the arrays each pretraining objective trains on out.

Every transform is a pure numpy function of (batch, rng): called with
`np.random.default_rng([seed, step, process_index])`, batch k stays a pure function of (seed, k). Output
shapes depend only on the config, never on the data (tf.data needs static shapes); each transform has a
`*_spec` function giving name -> (shape, dtype).

Input batches are packed rows (see pipeline.py): int32 [B, L] "tokens" (0 in padding), "segment_ids"
(1, 2, ... per document piece, 0 in padding) and "positions".

The reference semantics are BERT's create_pretraining_data (masked LM, next-sentence pairs) and T5's
preprocessors (span corruption, prefix LM); each docstring says where we differ.
"""

import numpy as np

from lmlab.data.tokenizer import BOS_ID, CLS_ID, EOS_ID, FIRST_SENTINEL_ID, MASK_ID, SEP_ID

F32, I32 = np.float32, np.int32


def _scatter_rows(values_BN, index_BN, keep_BN, width: int) -> np.ndarray:
  """out[b, index[b, n]] = values[b, n] where keep; zeros elsewhere ([B, width] int32)."""
  batch = values_BN.shape[0]
  out_BW = np.zeros((batch, width), I32)
  rows_BN = np.broadcast_to(np.arange(batch)[:, None], index_BN.shape)
  out_BW[rows_BN[keep_BN], index_BN[keep_BN]] = values_BN[keep_BN]
  return out_BW


def _segment_starts(segment_ids_BL) -> np.ndarray:
  """The column where each token's segment starts (our own, so we never trust "positions" blindly)."""
  _, length = segment_ids_BL.shape
  col_L = np.arange(length)
  new_BL = np.ones_like(segment_ids_BL, bool)
  new_BL[:, 1:] = segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1]
  return np.maximum.accumulate(np.where(new_BL, col_L, 0), axis=1)


def _next_token_targets(tokens_BL, segment_ids_BL):
  """numpy twin of objectives.causal_lm_targets: (targets, weights) for next-token prediction."""
  targets_BL = np.roll(tokens_BL, -1, axis=1)
  weights_BL = (np.roll(segment_ids_BL, -1, axis=1) == segment_ids_BL) & (segment_ids_BL > 0)
  weights_BL[:, -1] = False  # the last column's next token is in the next row
  return targets_BL.astype(I32), weights_BL


# ---------------------------------------------------------------------------------------------------------
# Masked LM (BERT)


def mask_tokens_spec(batch_size: int, seq_len: int) -> dict:
  """Output of mask_tokens; any other input key (token_types, nsp_labels, ...) passes through as is."""
  shape = (batch_size, seq_len)
  return {"tokens": (shape, I32), "targets": (shape, I32), "weights": (shape, F32),
          "segment_ids": (shape, I32), "positions": (shape, I32)}


def check_mlm_settings(*, vocab_size, num_special, mask_rate, replace_with_mask, replace_random,
                       whole_word=False, word_start_V=None) -> None:
  """Raises ValueError for masked-LM settings that cannot run (for config validation too)."""
  if not 0.0 < mask_rate < 1.0:
    raise ValueError(f"mask_rate = {mask_rate} must be in (0, 1).")
  if not (replace_with_mask >= 0 and replace_random >= 0 and replace_with_mask + replace_random <= 1):
    raise ValueError(f"replace_with_mask = {replace_with_mask} and replace_random = {replace_random} must "
                     "be >= 0 with a sum <= 1 (the rest of the selected tokens stay unchanged).")
  if num_special <= MASK_ID:
    raise ValueError(f"num_special = {num_special} must cover the reserved ids 0..{MASK_ID} ([MASK] is "
                     "special); use tokenizer.num_special_ids(num_sentinels).")
  if vocab_size <= num_special:
    raise ValueError(f"vocab_size = {vocab_size} leaves no non-special id to mask or sample "
                     f"(num_special = {num_special}).")
  if whole_word and (word_start_V is None or np.shape(word_start_V) != (vocab_size,)):
    raise ValueError(f"whole_word masking needs word_start_V, a bool array of shape ({vocab_size},) "
                     f"marking the word-start pieces; got shape {np.shape(word_start_V)}.")


def mask_tokens(batch: dict, rng: np.random.Generator, *, vocab_size: int, num_special: int,
                mask_rate: float = 0.15, replace_with_mask: float = 0.8, replace_random: float = 0.1,
                whole_word: bool = False, word_start_V=None) -> dict:
  """BERT's masked LM: selects a fixed count of maskable tokens per row and corrupts them.

  Maskable: real (segment > 0) and not special (id >= num_special: BOS/EOS/CLS/SEP/sentinels never are).
  Per row, max(1, round(mask_rate * maskable)) are selected (BERT: at least one prediction per sequence;
  BERT counts [CLS]/[SEP] in the length, we count only maskable tokens). Each selected token independently
  becomes [MASK] (replace_with_mask), a random id (replace_random) or stays. Unlike BERT, random ids are
  drawn from the non-special ids only.

  Whole-word masking: a word is a word-start piece (word_start_V) and the non-word-start pieces after it
  in the same segment; a piece after a special token or a segment start also starts a word. As in BERT,
  words are taken in random order and a word that would overshoot the count is skipped (later shorter
  words may still fill it), so a row gets at most the count, occasionally fewer; the 80/10/10 decision is
  made per piece, as BERT does.

  Outputs the corrupted tokens, targets (the original ids), weights (1.0 on selected tokens) and passes
  every other key through.
  """
  check_mlm_settings(vocab_size=vocab_size, num_special=num_special, mask_rate=mask_rate,
                     replace_with_mask=replace_with_mask, replace_random=replace_random,
                     whole_word=whole_word, word_start_V=word_start_V)
  tokens_BL = np.asarray(batch["tokens"], I32)
  segment_ids_BL = np.asarray(batch["segment_ids"])
  maskable_BL = (segment_ids_BL > 0) & (tokens_BL >= num_special)
  num_maskable_B = maskable_BL.sum(axis=1)
  count_B = np.minimum(np.maximum(np.round(mask_rate * num_maskable_B), 1), num_maskable_B).astype(int)
  if whole_word:
    selected_BL = _select_words(tokens_BL, segment_ids_BL, maskable_BL, count_B,
                                np.asarray(word_start_V, bool), rng)
  else:
    selected_BL = _select_tokens(maskable_BL, count_B, rng)
  u_BL = rng.random(tokens_BL.shape)
  random_ids_BL = rng.integers(num_special, vocab_size, size=tokens_BL.shape, dtype=I32)
  to_mask_BL = selected_BL & (u_BL < replace_with_mask)
  to_random_BL = selected_BL & (u_BL >= replace_with_mask) & (u_BL < replace_with_mask + replace_random)
  corrupted_BL = np.where(to_mask_BL, MASK_ID, np.where(to_random_BL, random_ids_BL, tokens_BL))
  out = dict(batch)
  out["tokens"] = corrupted_BL.astype(I32)
  out["targets"] = tokens_BL.copy()
  out["weights"] = selected_BL.astype(F32)
  return out


def _select_tokens(maskable_BL, count_B, rng) -> np.ndarray:
  """count_B[b] maskable positions of row b, uniformly at random."""
  keys_BL = np.where(maskable_BL, rng.random(maskable_BL.shape), 2.0)  # non-maskable sort last
  order_BL = np.argsort(keys_BL, axis=1)
  selected_BL = np.zeros_like(maskable_BL)
  np.put_along_axis(selected_BL, order_BL, np.arange(maskable_BL.shape[1]) < count_B[:, None], axis=1)
  return selected_BL


def _select_words(tokens_BL, segment_ids_BL, maskable_BL, count_B, word_start_V, rng) -> np.ndarray:
  """Whole words in random order, skipping a word that would overshoot count_B (BERT's rule)."""
  batch, length = tokens_BL.shape
  prev_maskable_BL = np.zeros_like(maskable_BL)
  prev_maskable_BL[:, 1:] = maskable_BL[:, :-1] & (segment_ids_BL[:, 1:] == segment_ids_BL[:, :-1])
  starts_BL = maskable_BL & (word_start_V[tokens_BL] | ~prev_maskable_BL)
  word_BL = np.cumsum(starts_BL, axis=1) - 1  # word index within the row, on maskable tokens
  rows_BL = np.broadcast_to(np.arange(batch)[:, None], (batch, length))
  flat_BL = np.where(maskable_BL, rows_BL * length + word_BL, 0)
  word_len_BW = np.bincount(flat_BL.ravel(), weights=maskable_BL.ravel(),
                            minlength=batch * length).reshape(batch, length).astype(int)
  keys_BW = np.where(word_len_BW > 0, rng.random((batch, length)), 2.0)  # absent words sort last
  order_BW = np.argsort(keys_BW, axis=1)
  chosen_BW = np.zeros((batch, length), bool)
  total_B = np.zeros(batch, int)
  rows_B = np.arange(batch)
  # Greedy skip-if-too-long is sequential per row; loop over the rank, vectorized over rows.
  for r in range(int(starts_BL.sum(axis=1).max(initial=0))):
    word_B = order_BW[:, r]
    len_B = word_len_BW[rows_B, word_B]
    take_B = (len_B > 0) & (total_B + len_B <= count_B)
    chosen_BW[rows_B, word_B] = take_B
    total_B += np.where(take_B, len_B, 0)
    if np.all(total_B >= count_B):
      break
  return maskable_BL & chosen_BW[rows_BL, np.maximum(word_BL, 0)]


# ---------------------------------------------------------------------------------------------------------
# Next-sentence prediction (BERT)


def nsp_half(seq_len: int) -> int:
  """Tokens per sentence half: [CLS] A [SEP] B [SEP] with len(A), len(B) <= half fits seq_len."""
  half = (seq_len - 3) // 2
  if half < 1:
    raise ValueError(f"seq_len = {seq_len} is too short for [CLS] A [SEP] B [SEP]; use at least 5.")
  return half


def pair_rows(docs: list[np.ndarray], seq_len: int) -> dict:
  """Candidate (A, B) pairs of one split, built once: consecutive chunks of `half` tokens of a document.

  Each document ([BOS] ids [EOS]; BOS/EOS are stripped) is cut into chunks of half = (seq_len - 3) // 2
  tokens (the last may be shorter); chunks i, i+1 form a row. A single-chunk document gives one row, its
  chunk split in two (A the first n // 2 tokens); documents under 2 tokens give none. Arrays: first,
  second [R, half] (0-padded), first_len, second_len, doc_id (index in `docs`) [R], all int32.

  Unlike BERT, halves are fixed-length token chunks, not sentence groups of random target length.
  """
  half = nsp_half(seq_len)
  firsts, seconds, doc_ids = [], [], []
  for doc_id, doc in enumerate(docs):
    ids = np.asarray(doc, I32)
    if ids.size and ids[0] == BOS_ID:
      ids = ids[1:]
    if ids.size and ids[-1] == EOS_ID:
      ids = ids[:-1]
    if ids.size < 2:
      continue
    if ids.size <= half:
      pairs = [(ids[:ids.size // 2], ids[ids.size // 2:])]
    else:
      chunks = [ids[i:i + half] for i in range(0, ids.size, half)]
      pairs = list(zip(chunks[:-1], chunks[1:]))
    for a, b in pairs:
      firsts.append(a)
      seconds.append(b)
      doc_ids.append(doc_id)

  def padded(pieces):
    out_RH = np.zeros((len(pieces), half), I32)
    for r, piece in enumerate(pieces):
      out_RH[r, :piece.size] = piece
    return out_RH

  return {"first": padded(firsts), "second": padded(seconds),
          "first_len": np.array([a.size for a in firsts], I32).reshape(-1),
          "second_len": np.array([b.size for b in seconds], I32).reshape(-1),
          "doc_id": np.array(doc_ids, I32).reshape(-1)}


def next_sentence_spec(batch_size: int, seq_len: int) -> dict:
  """Output of next_sentence; nsp_weights is 0 for batch-padding rows."""
  shape = (batch_size, seq_len)
  return {"tokens": (shape, I32), "token_types": (shape, I32), "segment_ids": (shape, I32),
          "positions": (shape, I32), "nsp_labels": ((batch_size,), I32), "nsp_weights": ((batch_size,), F32)}


def next_sentence(batch: dict, rng: np.random.Generator, *, seq_len: int) -> dict:
  """BERT's next-sentence pairs from a batch of pair_rows rows, as [CLS] A [SEP] B [SEP] rows of seq_len.

  With probability 0.5 a row's B is replaced by the B of a uniformly chosen other row of the batch from
  another document (NotNext, label 1); otherwise it stays (IsNext, label 0). BERT draws the random B from
  the whole corpus; drawing from the batch keeps the transform per-batch and stateless. A row with no
  other-document row in its batch stays IsNext. All-zero rows (first_len 0: batch padding) give all-zero
  outputs with nsp_weights 0.

  token_types: 0 on [CLS] A [SEP], 1 on B [SEP], 0 in padding; segment_ids 1 on real tokens.
  seq_len is the model's row length (it may exceed 2 * half + 3 by one when seq_len is even).
  """
  first_BH = np.asarray(batch["first"], I32)
  second_BH = np.asarray(batch["second"], I32)
  first_len_B = np.asarray(batch["first_len"], I32)
  second_len_B = np.asarray(batch["second_len"], I32)
  doc_B = np.asarray(batch["doc_id"])
  batch_size, half = first_BH.shape
  if 2 * half + 3 > seq_len:
    raise ValueError(f"Pair rows of half = {half} tokens need seq_len >= {2 * half + 3}, got {seq_len}; "
                     "build them with pair_rows(docs, seq_len).")
  real_B = first_len_B > 0
  # donor_ok[i, j]: row j may give its B to row i.
  donor_ok_BB = (doc_B[None, :] != doc_B[:, None]) & (second_len_B[None, :] > 0)
  donor_B = np.argmax(np.where(donor_ok_BB, rng.random((batch_size, batch_size)), -1.0), axis=1)
  not_next_B = (rng.random(batch_size) < 0.5) & donor_ok_BB.any(axis=1) & real_B
  second_BH = np.where(not_next_B[:, None], second_BH[donor_B], second_BH)
  second_len_B = np.where(not_next_B, second_len_B[donor_B], second_len_B)

  col_L = np.arange(seq_len)
  la_B1, lb_B1 = first_len_B[:, None], second_len_B[:, None]
  b_start_B1 = la_B1 + 2
  length_B1 = la_B1 + lb_B1 + 3
  a_BL = first_BH[:, np.clip(col_L - 1, 0, half - 1)]
  b_BL = np.take_along_axis(second_BH, np.clip(col_L - b_start_B1, 0, half - 1), 1)
  tokens_BL = np.select(
      [col_L == 0, col_L <= la_B1, col_L == la_B1 + 1, col_L < b_start_B1 + lb_B1, col_L == length_B1 - 1],
      [CLS_ID, a_BL, SEP_ID, b_BL, SEP_ID], 0)
  real_BL = (col_L < length_B1) & real_B[:, None]
  return {
      "tokens": np.where(real_BL, tokens_BL, 0).astype(I32),
      "token_types": (real_BL & (col_L >= b_start_B1)).astype(I32),
      "segment_ids": real_BL.astype(I32),
      "positions": np.where(real_BL, col_L, 0).astype(I32),
      "nsp_labels": not_next_B.astype(I32),
      "nsp_weights": real_B.astype(F32),
  }


def mlm_nsp_spec(batch_size: int, seq_len: int) -> dict:
  """Output of mlm_nsp: next_sentence's arrays plus the masked-LM targets and weights."""
  shape = (batch_size, seq_len)
  return {**next_sentence_spec(batch_size, seq_len), "targets": (shape, I32), "weights": (shape, F32)}


def mlm_nsp(batch: dict, rng: np.random.Generator, *, seq_len: int, **mlm_kwargs) -> dict:
  """next_sentence, then mask_tokens on the assembled rows ([CLS]/[SEP] are special: never masked)."""
  return mask_tokens(next_sentence(batch, rng, seq_len=seq_len), rng, **mlm_kwargs)


# ---------------------------------------------------------------------------------------------------------
# Span corruption (T5)


def _check_span_settings(noise_density, mean_noise_span_length) -> None:
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f"noise_density = {noise_density} must be in (0, 1).")
  if not mean_noise_span_length >= 1.0:
    raise ValueError(f"mean_noise_span_length = {mean_noise_span_length} must be >= 1.")


def _noise_counts(length, noise_density, mean_noise_span_length):
  """(noise tokens, noise spans) for a row of `length` real tokens (ints or int arrays), as T5 counts.

  T5 would fail when there are more spans than non-noise tokens (density near 1); we clip the spans.
  """
  length = np.maximum(length, 2)  # T5: avoids degenerate counts; the mask is cut back to the length
  num_noise = np.clip(np.round(length * noise_density), 1, length - 1).astype(np.int64)
  num_spans = np.maximum(np.round(num_noise / mean_noise_span_length), 1).astype(np.int64)
  return num_noise, np.minimum(num_spans, length - num_noise)


def _corrupted_lengths(tokens_length: int, noise_density, mean_noise_span_length) -> tuple[int, int]:
  """(inputs, targets) lengths, EOS included, after corrupting a row of tokens_length real tokens."""
  num_noise, num_spans = (int(x) for x in _noise_counts(tokens_length, noise_density, mean_noise_span_length))
  if tokens_length < 2:  # the mask is cut back to the length: no noise at all
    return tokens_length + 1, 1
  return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """T5's random_spans_helper: (tokens_length, targets_length) for encoder inputs of inputs_length.

  tokens_length is the longest raw row whose corrupted inputs (with EOS) fit inputs_length; usually they
  fill it exactly, sometimes one short (adding a token can add a sentinel too). targets_length is the
  corrupted targets' length with EOS. As in T5, at noise_density 0.5 the row is shortened by one token if
  the targets would otherwise be longer than the inputs.
  """
  _check_span_settings(noise_density, mean_noise_span_length)
  if inputs_length < 3:
    raise ValueError(f"inputs_length = {inputs_length} is too short for span corruption (at least one "
                     "kept token, one sentinel and EOS): use at least 3.")

  def inputs_len(n):
    return _corrupted_lengths(n, noise_density, mean_noise_span_length)[0]

  # Corrupted inputs are never longer than the raw row (each span shrinks to one sentinel), plus EOS.
  tokens_length = max(2, inputs_length - 1)
  while inputs_len(tokens_length + 1) <= inputs_length:
    tokens_length += 1
  targets_length = _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length)[1]
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length = _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length)[1]
  return tokens_length, targets_length


def max_noise_spans(tokens_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> int:
  """Most noise spans (= sentinels needed) in a row of up to tokens_length real tokens."""
  _check_span_settings(noise_density, mean_noise_span_length)
  # Counts grow with the length, so the full row needs the most.
  return int(_noise_counts(tokens_length, noise_density, mean_noise_span_length)[1])


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
  """T5's noise mask: bool [length], noise spans interleaved with non-noise spans, non-noise first."""
  _check_span_settings(noise_density, mean_noise_span_length)
  return _noise_mask_BL(np.array([length]), length, noise_density, mean_noise_span_length, rng)[0]


def _noise_mask_BL(length_B, width: int, noise_density, mean_noise_span_length, rng) -> np.ndarray:
  """One T5 noise mask per row, over that row's first length_B[b] columns; bool [B, width]."""
  batch = length_B.shape[0]
  padded_width = max(width, 2)  # T5 corrupts at least 2 tokens, then cuts the mask back
  num_noise_B, num_spans_B = _noise_counts(length_B, noise_density, mean_noise_span_length)
  num_nonnoise_B = np.maximum(length_B, 2) - num_noise_B
  noise_lengths_BS = _random_segmentation(num_noise_B, num_spans_B, padded_width, rng)
  nonnoise_lengths_BS = _random_segmentation(num_nonnoise_B, num_spans_B, padded_width, rng)
  # Spans alternate non-noise, noise, ...; a token's span number is the count of span starts up to it.
  interleaved_B2S = np.stack([nonnoise_lengths_BS, noise_lengths_BS], axis=2).reshape(batch, -1)
  starts_B2S = np.cumsum(interleaved_B2S, axis=1)[:, :-1]
  flat = (np.arange(batch)[:, None] * (padded_width + 1) + starts_B2S).ravel()
  start_count_BW = np.bincount(flat, minlength=batch * (padded_width + 1)).reshape(batch, -1)[:, :padded_width]
  is_noise_BW = np.cumsum(start_count_BW, axis=1) % 2 == 1
  return is_noise_BW[:, :width] & (np.arange(width) < length_B[:, None])


def _random_segmentation(num_items_B, num_segments_B, width: int, rng) -> np.ndarray:
  """Uniformly random split of num_items_B[b] items into num_segments_B[b] non-empty runs: lengths
  [B, max segments], zero-padded. T5 shuffles the cut indicators; choosing a random subset of gaps is
  the same distribution."""
  batch = num_items_B.shape[0]
  num_gaps = width - 1
  gap_G = np.arange(num_gaps)
  keys_BG = np.where(gap_G < num_items_B[:, None] - 1, rng.random((batch, num_gaps)), 2.0)
  order_BG = np.argsort(keys_BG, axis=1)
  cut_BG = np.zeros((batch, num_gaps), bool)
  np.put_along_axis(cut_BG, order_BG, gap_G < num_segments_B[:, None] - 1, axis=1)
  segment_BW = np.concatenate([np.zeros((batch, 1), int), np.cumsum(cut_BG, axis=1)], axis=1)
  max_segments = int(num_segments_B.max(initial=1))
  item_BW = np.arange(width) < num_items_B[:, None]
  flat_BW = np.arange(batch)[:, None] * max_segments + np.minimum(segment_BW, max_segments - 1)
  lengths = np.bincount(flat_BW.ravel(), weights=item_BW.ravel(), minlength=batch * max_segments)
  return lengths.reshape(batch, max_segments).astype(int)


def span_corruption_spec(batch_size: int, inputs_length: int, targets_length: int) -> dict:
  """Output of span_corruption."""
  enc, dec = (batch_size, inputs_length), (batch_size, targets_length)
  return {"encoder_tokens": (enc, I32), "encoder_segment_ids": (enc, I32), "encoder_positions": (enc, I32),
          "decoder_targets": (dec, I32), "decoder_inputs": (dec, I32), "decoder_segment_ids": (dec, I32),
          "decoder_positions": (dec, I32), "weights": (dec, F32)}


def span_corruption(batch: dict, rng: np.random.Generator, *, inputs_length: int, targets_length: int,
                    noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                    num_sentinels: int) -> dict:
  """T5's span corruption of rows of tokens_length = span_corruption_lengths(inputs_length, ...)[0].

  Noise is drawn over each row's real tokens only (document boundaries inside a row are ignored, as in
  T5's concatenated chunks). Encoder tokens: the kept tokens with each noise span replaced by one
  sentinel, <extra_id_0> = FIRST_SENTINEL_ID first, then +1 (T5 counts down from the vocabulary's end),
  then EOS. Decoder targets: each sentinel followed by its span, then EOS; decoder inputs are the targets
  shifted right after BOS. Padding (and all-padding rows) give zeros with weight 0.
  """
  _check_span_settings(noise_density, mean_noise_span_length)
  tokens_BL = np.asarray(batch["tokens"], I32)
  real_BL = np.asarray(batch["segment_ids"]) > 0
  batch_size, length = tokens_BL.shape
  need_inputs, need_targets = _corrupted_lengths(length, noise_density, mean_noise_span_length)
  if need_inputs > inputs_length or need_targets > targets_length:
    raise ValueError(
        f"Rows of {length} tokens corrupt to {need_inputs} inputs and {need_targets} targets tokens, more "
        f"than inputs_length = {inputs_length} / targets_length = {targets_length}; pack rows of "
        "span_corruption_lengths(inputs_length, noise_density, mean_noise_span_length)[0] tokens.")
  num_spans = max_noise_spans(length, noise_density, mean_noise_span_length)
  if num_spans > num_sentinels:
    raise ValueError(
        f"Rows of {length} tokens get up to {num_spans} noise spans (noise_density = {noise_density}, "
        f"mean_noise_span_length = {mean_noise_span_length}) but there are only num_sentinels = "
        f"{num_sentinels} sentinels: raise tokenizer.num_sentinels or the mean span length.")

  # Move real tokens to the front (pack_documents already pads only at the end).
  tokens_BL = np.take_along_axis(tokens_BL, np.argsort(~real_BL, axis=1, kind="stable"), axis=1)
  num_real_B = real_BL.sum(axis=1)
  real_BL = np.arange(length) < num_real_B[:, None]
  noise_BL = _noise_mask_BL(num_real_B, length, noise_density, mean_noise_span_length, rng)
  prev_noise_BL = np.zeros_like(noise_BL)
  prev_noise_BL[:, 1:] = noise_BL[:, :-1]
  span_start_BL = noise_BL & ~prev_noise_BL
  sentinel_BL = FIRST_SENTINEL_ID + np.cumsum(span_start_BL, axis=1) - 1
  has_tokens_B = num_real_B > 0
  rows_B = np.arange(batch_size)

  # Encoder: kept tokens and one sentinel per span, then EOS.
  keep_BL = real_BL & (~noise_BL | span_start_BL)
  enc_BI = _scatter_rows(np.where(noise_BL, sentinel_BL, tokens_BL), np.cumsum(keep_BL, axis=1) - 1,
                         keep_BL, inputs_length)
  enc_len_B = keep_BL.sum(axis=1)
  enc_BI[rows_B[has_tokens_B], enc_len_B[has_tokens_B]] = EOS_ID
  enc_len_B = np.where(has_tokens_B, enc_len_B + 1, 0)

  # Decoder targets: each span's token after its sentinel (one extra slot at each span start), then EOS.
  end_BL = np.cumsum(noise_BL.astype(int) + span_start_BL, axis=1)
  dec_BT = _scatter_rows(tokens_BL, end_BL - 1, noise_BL, targets_length)
  dec_BT[np.nonzero(span_start_BL)[0], (end_BL - 2)[span_start_BL]] = sentinel_BL[span_start_BL]
  dec_len_B = noise_BL.sum(axis=1) + span_start_BL.sum(axis=1)
  dec_BT[rows_B[has_tokens_B], dec_len_B[has_tokens_B]] = EOS_ID
  dec_len_B = np.where(has_tokens_B, dec_len_B + 1, 0)

  enc_real_BI = np.arange(inputs_length) < enc_len_B[:, None]
  dec_real_BT = np.arange(targets_length) < dec_len_B[:, None]
  dec_inputs_BT = np.zeros_like(dec_BT)
  dec_inputs_BT[:, 0] = BOS_ID
  dec_inputs_BT[:, 1:] = dec_BT[:, :-1]
  return {
      "encoder_tokens": enc_BI,
      "encoder_segment_ids": enc_real_BI.astype(I32),
      "encoder_positions": np.where(enc_real_BI, np.arange(inputs_length), 0).astype(I32),
      "decoder_targets": dec_BT,
      "decoder_inputs": np.where(dec_real_BT, dec_inputs_BT, 0).astype(I32),
      "decoder_segment_ids": dec_real_BT.astype(I32),
      "decoder_positions": np.where(dec_real_BT, np.arange(targets_length), 0).astype(I32),
      "weights": dec_real_BT.astype(F32),
  }


# ---------------------------------------------------------------------------------------------------------
# Decoder-only LM: causal and prefix (one batch layout for both)


def lm_spec(batch_size: int, seq_len: int) -> dict:
  """Output of causal_lm and prefix_lm."""
  shape = (batch_size, seq_len)
  return {"tokens": (shape, I32), "segment_ids": (shape, I32), "positions": (shape, I32),
          "prefix": (shape, I32), "targets": (shape, I32), "weights": (shape, F32)}


def causal_lm(batch: dict, rng: np.random.Generator) -> dict:
  """Plain next-token prediction in prefix_lm's layout (prefix all zeros); rng is unused."""
  del rng
  tokens_BL = np.asarray(batch["tokens"], I32)
  segment_ids_BL = np.asarray(batch["segment_ids"], I32)
  targets_BL, weights_BL = _next_token_targets(tokens_BL, segment_ids_BL)
  return {"tokens": tokens_BL, "segment_ids": segment_ids_BL, "positions": np.asarray(batch["positions"], I32),
          "prefix": np.zeros_like(tokens_BL), "targets": targets_BL, "weights": weights_BL.astype(F32)}


def prefix_lm(batch: dict, rng: np.random.Generator, *, split="random") -> dict:
  """T5's prefix LM on packed rows: each segment (document piece) of n tokens gets a split point s, its
  first s tokens are the prefix (prefix = 1: bidirectional attention within the segment's prefix) and
  only targets in the suffix are weighted: the last prefix token predicts the first suffix token.

  split="random": s uniform in [1, n - 1] (T5's random_prefix_noise_mask); a float f: s = round(f * n)
  clipped to [1, n - 1]. A one-token segment is all prefix and has no target.
  """
  tokens_BL = np.asarray(batch["tokens"], I32)
  segment_ids_BL = np.asarray(batch["segment_ids"], I32)
  batch_size, length = tokens_BL.shape
  rows_BL = np.broadcast_to(np.arange(batch_size)[:, None], (batch_size, length))
  flat_BL = rows_BL * (length + 1) + segment_ids_BL  # segment ids are < length + 1
  seg_len_BS = np.bincount(flat_BL.ravel(), minlength=batch_size * (length + 1)).reshape(batch_size, -1)
  if isinstance(split, str):
    if split != "random":
      raise ValueError(f"prefix_lm split = {split!r} must be 'random' or a fraction in [0, 1].")
    split_BS = 1 + np.floor(rng.random(seg_len_BS.shape) * np.maximum(seg_len_BS - 1, 0))
  else:
    if not 0.0 <= split <= 1.0:
      raise ValueError(f"prefix_lm split = {split} must be 'random' or a fraction in [0, 1].")
    split_BS = np.clip(np.round(split * seg_len_BS), 1, np.maximum(seg_len_BS - 1, 1))
  index_in_segment_BL = np.arange(length) - _segment_starts(segment_ids_BL)
  split_BL = np.take_along_axis(split_BS, segment_ids_BL, axis=1)
  prefix_BL = (segment_ids_BL > 0) & (index_in_segment_BL < split_BL)
  targets_BL, weights_BL = _next_token_targets(tokens_BL, segment_ids_BL)
  weights_BL &= ~np.roll(prefix_BL, -1, axis=1)
  return {"tokens": tokens_BL, "segment_ids": segment_ids_BL, "positions": np.asarray(batch["positions"], I32),
          "prefix": prefix_BL.astype(I32), "targets": targets_BL, "weights": weights_BL.astype(F32)}
