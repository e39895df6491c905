"""Decoder-only language modelling: causal LM and T5's prefix LM, one batch layout for both.

Rows are documents packed into seq_len rows (data/packing.py). The transforms add next-token `targets`,
float `weights` (1 where a target is predicted; never across a document boundary) and `prefix` (1 on the
tokens that attend bidirectionally; all 0 for causal LM). Shape suffixes: B batch, L row length,
Q segments (document pieces) of a row.
"""

import functools

import numpy as np

from lmlab.data import packing
from lmlab.objectives.base import F32, I32, Objective, ObjectiveData, segment_starts


def next_token_targets(tokens_BL, segment_ids_BL):
  """(targets, bool weights) for next-token prediction on packed rows: weight 0 where the next token is
  padding or another document, and in the last column (its next token is in the next row)."""
  tokens_BL, segment_ids_BL = np.asarray(tokens_BL), np.asarray(segment_ids_BL)
  targets_BL = np.roll(tokens_BL, -1, axis=1)
  weights_BL = (np.roll(segment_ids_BL, -1, axis=1) == segment_ids_BL) & (segment_ids_BL > 0)
  weights_BL[:, -1] = False
  return targets_BL.astype(I32), weights_BL


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
  targets_BL, weights_BL = next_token_targets(tokens_BL, segment_ids_BL)
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
  seg_len_BQ = np.bincount(flat_BL.ravel(), minlength=batch_size * (length + 1)).reshape(batch_size, -1)
  if isinstance(split, str):
    if split != "random":
      raise ValueError(f"prefix_lm split = {split!r} must be 'random' or a fraction in [0, 1].")
    split_BQ = 1 + np.floor(rng.random(seg_len_BQ.shape) * np.maximum(seg_len_BQ - 1, 0))
  else:
    if not 0.0 <= split <= 1.0:
      raise ValueError(f"prefix_lm split = {split} must be 'random' or a fraction in [0, 1].")
    split_BQ = np.clip(np.round(split * seg_len_BQ), 1, np.maximum(seg_len_BQ - 1, 1))
  index_in_segment_BL = np.arange(length) - segment_starts(segment_ids_BL)
  split_BL = np.take_along_axis(split_BQ, segment_ids_BL, axis=1)
  prefix_BL = (segment_ids_BL > 0) & (index_in_segment_BL < split_BL)
  targets_BL, weights_BL = next_token_targets(tokens_BL, segment_ids_BL)
  weights_BL &= ~np.roll(prefix_BL, -1, axis=1)
  return {"tokens": tokens_BL, "segment_ids": segment_ids_BL, "positions": np.asarray(batch["positions"], I32),
          "prefix": prefix_BL.astype(I32), "targets": targets_BL, "weights": weights_BL.astype(F32)}


def _packed_lm(make_transform):
  """The `data` of an objective over packed rows of seq_len with the transform make_transform(cfg)."""
  def data(cfg, vocab_size, sp=None) -> ObjectiveData:
    del vocab_size, sp
    seq_len = cfg.data.seq_len
    return ObjectiveData(lambda docs: packing.PackedRows(docs, seq_len), make_transform(cfg),
                         lambda batch_size: lm_spec(batch_size, seq_len))
  return data


OBJECTIVES = (
    Objective(
        name="causal_lm",
        families=("decoder", "rnn", "ngram"),
        data=_packed_lm(lambda cfg: causal_lm),
    ),
    Objective(
        name="prefix_lm",
        families=("decoder",),
        model_options={"prefix": True},
        data=_packed_lm(lambda cfg: functools.partial(prefix_lm, split=cfg.objective.prefix_fraction or "random")),
    ),
)
