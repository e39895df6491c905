"""T5's span corruption for the encoder-decoder: noise spans replaced by sentinels in the encoder input,
the spans (after their sentinels) as the decoder targets.

Reference semantics: T5's preprocessors (random_spans_helper, random_spans_noise_mask, span_corruption).
Shape suffixes: B batch, L raw row length, I encoder inputs length, T decoder targets length, Z noise
spans of a row, W the scratch width of a row, G gaps between a row's tokens.
"""

import functools

import numpy as np

from lmlab.data import packing
from lmlab.data.tokenizer import BOS_ID, EOS_ID, FIRST_SENTINEL_ID
from lmlab.errors import ConfigError
from lmlab.objectives.base import F32, I32, Objective, ObjectiveData, scatter_rows

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
  noise_lengths_BZ = _random_segmentation(num_noise_B, num_spans_B, padded_width, rng)
  nonnoise_lengths_BZ = _random_segmentation(num_nonnoise_B, num_spans_B, padded_width, rng)
  # Spans alternate non-noise, noise, ...; a token's span number is the count of span starts up to it.
  interleaved_B2Z = np.stack([nonnoise_lengths_BZ, noise_lengths_BZ], axis=2).reshape(batch, -1)
  starts_B2Z = np.cumsum(interleaved_B2Z, axis=1)[:, :-1]
  flat = (np.arange(batch)[:, None] * (padded_width + 1) + starts_B2Z).ravel()
  start_count_BW = np.bincount(flat, minlength=batch * (padded_width + 1)).reshape(batch, -1)[:, :padded_width]
  is_noise_BW = np.cumsum(start_count_BW, axis=1) % 2 == 1
  return is_noise_BW[:, :width] & (np.arange(width) < length_B[:, None])


def _random_segmentation(num_items_B, num_segments_B, width: int, rng) -> np.ndarray:
  """Uniformly random split of num_items_B[b] items into num_segments_B[b] non-empty runs: lengths
  [B, Z] (Z = the most segments of a row), zero-padded. T5 shuffles the cut indicators; choosing a
  random subset of gaps is the same distribution."""
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
          "targets": (dec, I32), "decoder_inputs": (dec, I32), "decoder_segment_ids": (dec, I32),
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
  enc_BI = scatter_rows(np.where(noise_BL, sentinel_BL, tokens_BL), np.cumsum(keep_BL, axis=1) - 1,
                         keep_BL, inputs_length)
  enc_len_B = keep_BL.sum(axis=1)
  enc_BI[rows_B[has_tokens_B], enc_len_B[has_tokens_B]] = EOS_ID
  enc_len_B = np.where(has_tokens_B, enc_len_B + 1, 0)

  # Decoder targets: each span's token after its sentinel (one extra slot at each span start), then EOS.
  end_BL = np.cumsum(noise_BL.astype(int) + span_start_BL, axis=1)
  dec_BT = scatter_rows(tokens_BL, end_BL - 1, noise_BL, targets_length)
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
      "targets": dec_BT,
      "decoder_inputs": np.where(dec_real_BT, dec_inputs_BT, 0).astype(I32),
      "decoder_segment_ids": dec_real_BT.astype(I32),
      "decoder_positions": np.where(dec_real_BT, np.arange(targets_length), 0).astype(I32),
      "weights": dec_real_BT.astype(F32),
  }


def check(cfg) -> None:
  """Enough sentinels for the most noise spans a row can get."""
  ob = cfg.objective
  tokens_length, _ = span_corruption_lengths(cfg.data.seq_len, ob.noise_density, ob.mean_span_length)
  spans = max_noise_spans(tokens_length, ob.noise_density, ob.mean_span_length)
  if spans > cfg.tokenizer.num_sentinels:
    raise ConfigError(f"Span corruption of {tokens_length}-token rows makes up to {spans} noise spans but "
                      f"config.tokenizer.num_sentinels = {cfg.tokenizer.num_sentinels}; raise it to {spans} "
                      "or raise config.objective.mean_span_length.")


def data(cfg, vocab_size, sp=None) -> ObjectiveData:
  """Rows packed at the raw length that corrupts to exactly seq_len encoder tokens (T5's arithmetic)."""
  del vocab_size, sp
  ob, seq_len = cfg.objective, cfg.data.seq_len
  tokens_length, targets_length = span_corruption_lengths(seq_len, ob.noise_density, ob.mean_span_length)
  transform = functools.partial(
      span_corruption, inputs_length=seq_len, targets_length=targets_length, noise_density=ob.noise_density,
      mean_noise_span_length=ob.mean_span_length, num_sentinels=cfg.tokenizer.num_sentinels)
  return ObjectiveData(lambda docs: packing.PackedRows(docs, tokens_length), transform,
                       lambda batch_size: span_corruption_spec(batch_size, seq_len, targets_length))


OBJECTIVES = (
    Objective(
        name="span_corruption",
        families=("encoder_decoder",),
        data=data,
        decode="seq2seq",
        check=check,
    ),
)
