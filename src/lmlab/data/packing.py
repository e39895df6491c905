"""Packing tokenized documents into fixed-length rows (numpy only: no TensorFlow on this path).

A packed set is a dict of int32 [R, L] numpy arrays (R rows of L = seq_len tokens):
  tokens       token ids; 0 (PAD_ID) in padding.
  segment_ids  1, 2, ... numbering the documents within a row; 0 marks padding (loss weight 0).
  positions    0, 1, ... within each segment; 0 in padding.
Shape suffixes: R rows, L row length, M documents, N tokens of the concatenated stream.
"""

import numpy as np

KEYS = ("tokens", "segment_ids", "positions")


def pack_documents(docs: list[np.ndarray], seq_len: int) -> dict:
  """Concatenates the documents in order and cuts the stream into rows of seq_len; only the last row is
  padded. A document running past a row's end continues as a new segment (positions from 0) in the next."""
  lengths_M = np.array([len(d) for d in docs], np.int64)
  stream_N = np.concatenate(docs).astype(np.int32) if docs else np.zeros(0, np.int32)
  n = stream_N.size
  num_rows = -(-n // seq_len)
  k_N = np.arange(n)
  # A segment starts at each (non-empty) document start and at each row start.
  starts_M = np.cumsum(lengths_M) - lengths_M
  new_segment_N = np.zeros(n, bool)
  new_segment_N[starts_M[lengths_M > 0]] = True
  new_segment_N[::seq_len] = True
  # Number segments globally, then rebase per row so each row's first segment is 1.
  global_segment_N = np.cumsum(new_segment_N)
  segment_ids_N = global_segment_N - np.repeat(global_segment_N[::seq_len], seq_len)[:n] + 1
  segment_start_N = np.maximum.accumulate(np.where(new_segment_N, k_N, 0))
  positions_N = k_N - segment_start_N

  def rows(values_N):
    out = np.zeros(num_rows * seq_len, np.int32)
    out[:n] = values_N
    return out.reshape(num_rows, seq_len)

  return {"tokens": rows(stream_N), "segment_ids": rows(segment_ids_N), "positions": rows(positions_N)}
