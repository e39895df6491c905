"""BERT's objectives: masked LM on packed documents (mlm; a bidirectional RNN trains with it too) and
masked LM + next-sentence prediction on [CLS] A [SEP] B [SEP] pairs (mlm_nsp).

Reference semantics: BERT's create_pretraining_data; each docstring says where we differ. Shape
suffixes: B batch, L row length, A an NSP half (sentence A or B), R rows of a split, V vocabulary, W a
row's scratch width (whole-word masking: one slot per word of the row).
"""

import functools

import numpy as np

from lmlab.data import packing, tokenizer
from lmlab.data.tokenizer import BOS_ID, CLS_ID, EOS_ID, MASK_ID, SEP_ID
from lmlab.objectives.base import F32, I32, TOKENS, LossTerm, Objective, ObjectiveData


def mask_tokens_spec(batch_size: int, seq_len: int) -> dict:
  """Output of mask_tokens; any other input key (token_types, nsp_labels, ...) passes through as is."""
  shape = (batch_size, seq_len)
  return {"tokens": (shape, I32), "targets": (shape, I32), "weights": (shape, F32),
          "segment_ids": (shape, I32), "positions": (shape, I32), **_kind_spec(shape)}


# What the input shows at a selected position: [MASK], a random token, or the token unchanged. Each has
# a weight array (they sum to `weights`) and an evaluation-only loss term: the masked-LM loss split by
# input kind, where the unigram plateau is visible (a model that ignores context scores the same on all
# three; one that reads the input is near-perfect on unchanged tokens and uses context for [MASK]).
INPUT_KINDS = ("mask", "random", "kept")


def _kind_spec(shape) -> dict:
  return {f"{kind}_weights": (shape, F32) for kind in INPUT_KINDS}


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

  Outputs the corrupted tokens, targets (the original ids), weights (1.0 on selected tokens), the
  weights split by input kind (mask_weights, random_weights, kept_weights: INPUT_KINDS) and passes every
  other key through.
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
  to_keep_BL = selected_BL & ~to_mask_BL & ~to_random_BL
  for kind, kind_BL in zip(INPUT_KINDS, (to_mask_BL, to_random_BL, to_keep_BL)):
    out[f"{kind}_weights"] = kind_BL.astype(F32)
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
  second [R, A = half] (0-padded), first_len, second_len, doc_id (index in `docs`) [R], all int32.

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
    out_RA = np.zeros((len(pieces), half), I32)
    for r, piece in enumerate(pieces):
      out_RA[r, :piece.size] = piece
    return out_RA

  return {"first": padded(firsts), "second": padded(seconds),
          "first_len": np.array([a.size for a in firsts], I32).reshape(-1),
          "second_len": np.array([b.size for b in seconds], I32).reshape(-1),
          "doc_id": np.array(doc_ids, I32).reshape(-1)}


def pair_counts(lengths_M: np.ndarray, half: int) -> np.ndarray:
  """Rows pair_rows makes of documents of these lengths (BOS and EOS included), int64 [M]."""
  n_M = np.maximum(np.asarray(lengths_M, np.int64) - 2, 0)
  return np.where(n_M < 2, 0, np.where(n_M <= half, 1, -(-n_M // half) - 1))


class PairRows:
  """The rows pair_rows would make of a document stream (data/documents.py), read a batch at a time.
  Documents must be framed as stored ([BOS] ids [EOS]); holds 8 bytes per document, never the tokens."""

  def __init__(self, docs, seq_len: int):
    self.docs, self.half = docs, nsp_half(seq_len)
    self._start_M, length_M = docs.doc_bounds()
    self._ids_M = length_M - 2  # without BOS and EOS
    self._end_M = np.cumsum(pair_counts(length_M, self.half))  # rows before each document's end
    self.num_rows = int(self._end_M[-1]) if self._end_M.size else 0

  def get(self, index_B: np.ndarray) -> dict:
    half, size = self.half, len(index_B)
    out = {"first": np.zeros((size, half), I32), "second": np.zeros((size, half), I32),
           "first_len": np.zeros(size, I32), "second_len": np.zeros(size, I32), "doc_id": np.zeros(size, I32)}
    doc_B = np.searchsorted(self._end_M, np.asarray(index_B, np.int64), side="right")
    for b, (r, d) in enumerate(zip(index_B, doc_B)):
      j = int(r) - (int(self._end_M[d - 1]) if d else 0)  # the document's j-th pair
      n, first = int(self._ids_M[d]), int(self._start_M[d]) + 1
      if n <= half:
        a_len = n // 2
        ids = self.docs.tokens(first, first + n)
        a, second = ids[:a_len], ids[a_len:]
      else:
        ids = self.docs.tokens(first + j * half, first + min((j + 2) * half, n))
        a, second = ids[:half], ids[half:]
      out["first"][b, :a.size], out["second"][b, :second.size] = a, second
      out["first_len"][b], out["second_len"][b], out["doc_id"][b] = a.size, second.size, d
    return out


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
  first_BA = np.asarray(batch["first"], I32)
  second_BA = np.asarray(batch["second"], I32)
  first_len_B = np.asarray(batch["first_len"], I32)
  second_len_B = np.asarray(batch["second_len"], I32)
  doc_B = np.asarray(batch["doc_id"])
  batch_size, half = first_BA.shape
  if 2 * half + 3 > seq_len:
    raise ValueError(f"Pair rows of half = {half} tokens need seq_len >= {2 * half + 3}, got {seq_len}; "
                     "build them with pair_rows(docs, seq_len).")
  real_B = first_len_B > 0
  # donor_ok[i, j]: row j may give its B to row i.
  donor_ok_BB = (doc_B[None, :] != doc_B[:, None]) & (second_len_B[None, :] > 0)
  donor_B = np.argmax(np.where(donor_ok_BB, rng.random((batch_size, batch_size)), -1.0), axis=1)
  not_next_B = (rng.random(batch_size) < 0.5) & donor_ok_BB.any(axis=1) & real_B
  second_BA = np.where(not_next_B[:, None], second_BA[donor_B], second_BA)
  second_len_B = np.where(not_next_B, second_len_B[donor_B], second_len_B)

  col_L = np.arange(seq_len)
  la_B1, lb_B1 = first_len_B[:, None], second_len_B[:, None]
  b_start_B1 = la_B1 + 2
  length_B1 = la_B1 + lb_B1 + 3
  a_BL = first_BA[:, np.clip(col_L - 1, 0, half - 1)]
  b_BL = np.take_along_axis(second_BA, np.clip(col_L - b_start_B1, 0, half - 1), 1)
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
  return {**next_sentence_spec(batch_size, seq_len), "targets": (shape, I32), "weights": (shape, F32),
          **_kind_spec(shape)}


def mlm_nsp(batch: dict, rng: np.random.Generator, *, seq_len: int, **mlm_kwargs) -> dict:
  """next_sentence, then mask_tokens on the assembled rows ([CLS]/[SEP] are special: never masked)."""
  return mask_tokens(next_sentence(batch, rng, seq_len=seq_len), rng, **mlm_kwargs)


def word_starts(sp) -> np.ndarray:
  """bool [V]: pieces that start a word (sentencepiece marks them with a leading '\u2581')."""
  return np.array([sp.id_to_piece(i).startswith("\u2581") for i in range(sp.get_piece_size())])


def _mlm_options(cfg, vocab_size: int, sp) -> dict:
  """mask_tokens' keyword arguments from cfg.objective; sp gives the word starts of whole-word masking."""
  ob = cfg.objective
  if ob.whole_word and sp is None:
    raise ValueError("Whole-word masking needs the sentencepiece model (its word-start pieces).")
  options = dict(vocab_size=vocab_size, num_special=tokenizer.num_special_ids(cfg.tokenizer.num_sentinels),
                 mask_rate=ob.mask_rate, replace_with_mask=ob.mask_token_rate,
                 replace_random=ob.random_token_rate, whole_word=ob.whole_word,
                 word_start_V=word_starts(sp) if ob.whole_word else None)
  check_mlm_settings(**options)
  return options


def mlm_data(cfg, vocab_size: int, sp=None) -> ObjectiveData:
  seq_len = cfg.data.seq_len
  return ObjectiveData(lambda docs: packing.PackedRows(docs, seq_len),
                       functools.partial(mask_tokens, **_mlm_options(cfg, vocab_size, sp)),
                       lambda batch_size: mask_tokens_spec(batch_size, seq_len))


def mlm_nsp_data(cfg, vocab_size: int, sp=None) -> ObjectiveData:
  seq_len = cfg.data.seq_len
  # In a fixed shuffled order: next_sentence draws NotNext halves from other documents of the same batch,
  # so even the (unshuffled) evaluation batches must mix documents.
  return ObjectiveData(lambda docs: packing.Shuffled(PairRows(docs, seq_len)),
                       functools.partial(mlm_nsp, seq_len=seq_len, **_mlm_options(cfg, vocab_size, sp)),
                       lambda batch_size: mlm_nsp_spec(batch_size, seq_len))


# The next-sentence term: pooled [CLS] logits against the IsNext / NotNext label of each row.
NSP = LossTerm(prefix="nsp_", logits="nsp_logits", targets="nsp_labels", weights="nsp_weights",
               scale_key="nsp_weight")
# The masked-LM loss by input kind (evaluation only): metrics mask_loss, random_loss, kept_loss, ...
BY_KIND = tuple(LossTerm(prefix=f"{kind}_", weights=f"{kind}_weights") for kind in INPUT_KINDS)

OBJECTIVES = (
    Objective(
        name="mlm",
        families=("encoder", "rnn"),  # rnn: a bidirectional LSTM/GRU
        data=mlm_data,
        eval_terms=BY_KIND,
        model_options={"bidirectional": True},
        decode="fill_mask",
    ),
    Objective(
        name="mlm_nsp",
        families=("encoder",),
        data=mlm_nsp_data,
        losses=(TOKENS, NSP),
        eval_terms=BY_KIND,
        model_options={"bidirectional": True, "nsp_head": True},
        decode="fill_mask_pair",
    ),
)
