"""The train and eval batch streams over a split's rows (packed rows, see packing.py, or an objective's
own rows), with the objective's seeded transform applied per batch.

Rows are read on demand (packing.Rows: a row count and get(index) -> arrays), never materialized whole,
so the memory of a run does not grow with its corpus. Shape suffixes: B batch rows (this process's share),
R rows of the split.
"""

import collections
import concurrent.futures
from typing import Callable, Iterator

import numpy as np

from lmlab.data import packing


def as_rows(rows) -> packing.Rows:
  return packing.ArrayRows(rows) if isinstance(rows, dict) else rows


def train_batches(rows, batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                  prefetch: int = 2, transform: Callable[[dict, np.random.Generator], dict] | None = None
                  ) -> Iterator[dict]:
  """Endless numpy batches of `batch_size` rows (this process's share of the global batch), reshuffled
  every epoch. Batch `step` is a pure function of (seed, step, process_index): resuming at start_step
  yields exactly what an uninterrupted run would have, without replaying earlier batches.

  `rows` is a Rows (or a dict of arrays with a common leading axis R). Example i (= step * batch_size +
  b) is row index_shuffle(i % R, key(seed, i // R, process_index), R): a stateless permutation of the R
  rows per epoch, so every row is seen once per epoch. The rows are read, then the objective's
  `transform(batch, rng)` runs with rng = transform_rng(seed, step, process_index). A background thread
  makes the next `prefetch` batches while the train step runs (numpy and the row reads release the GIL).
  """
  rows = as_rows(rows)
  num_rows = rows.num_rows
  if num_rows == 0:
    raise ValueError("train_batches needs at least one row; the training split has no tokens.")

  def batch(step: int) -> dict:
    index_B = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.uint64)
    key_B = shuffle_key(seed, index_B // np.uint64(num_rows), process_index)
    out = rows.get(index_shuffle(index_B % np.uint64(num_rows), key_B, num_rows).astype(np.int64))
    return out if transform is None else transform(out, transform_rng(seed, step, process_index))

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmlab-batches")
  try:
    ahead = collections.deque(pool.submit(batch, s) for s in range(start_step, start_step + prefetch + 1))
    step = start_step + len(ahead)
    while True:
      out = ahead.popleft().result()
      ahead.append(pool.submit(batch, step))
      step += 1
      yield out
  finally:
    pool.shutdown(wait=False, cancel_futures=True)


def _mix(x):
  """splitmix64's finalizer on uint64 arrays (wrapping arithmetic): a cheap hash with full avalanche."""
  x = np.asarray(x, np.uint64)
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def shuffle_key(seed: int, epoch_B, process_index: int):
  """The permutation key of each example's (seed, epoch, process)."""
  with np.errstate(over="ignore"):
    key = _mix(np.uint64(seed % 2**64) + np.uint64(0x9E3779B97F4A7C15))
    return _mix(_mix(key ^ np.asarray(epoch_B, np.uint64)) ^ np.uint64(process_index))


def index_shuffle(index_B, key_B, num_rows: int, rounds: int = 4):
  """Element index_B of a pseudo-random permutation of [0, num_rows) chosen by key_B, without building
  the permutation (memory does not grow with the corpus): a balanced Feistel network on the smallest
  even-bit domain that holds num_rows, walked until it lands inside (each step is a bijection of the
  domain, so the walk returns to [0, num_rows) and the map stays one to one there); the domain is under
  4 x num_rows, so a walk takes a few steps on average."""
  half = max(1, (max(num_rows - 1, 1).bit_length() + 1) // 2)
  low = np.uint64((1 << half) - 1)
  shift = np.uint64(half)
  key_B = np.asarray(key_B, np.uint64)

  def feistel(x, key):
    left, right = x >> shift, x & low
    for r in range(rounds):
      with np.errstate(over="ignore"):
        f = _mix(right ^ _mix(key + np.uint64(r))) & low
      left, right = right, left ^ f
    return (left << shift) | right

  x = feistel(np.asarray(index_B, np.uint64), key_B)
  outside = x >= np.uint64(num_rows)
  while outside.any():
    x[outside] = feistel(x[outside], key_B[outside])
    outside = x >= np.uint64(num_rows)
  return x


def transform_rng(seed: int, step: int, process_index: int) -> np.random.Generator:
  """The objective transform's generator for one batch: a pure function of (seed, step, process)."""
  return np.random.default_rng([seed, step, process_index])


class EvalBatches:
  """The rows in order, once, as numpy batches made when indexed (nothing is held between evaluations);
  the last batch is filled with all-zero rows (padding: weight 0). The transform's rng for batch k is
  transform_rng(seed, k, 0), so every evaluation sees the same masks."""

  def __init__(self, rows, batch_size: int, transform: Callable[[dict, np.random.Generator], dict] | None = None,
               seed: int = 0):
    self.rows, self.batch_size, self.transform, self.seed = as_rows(rows), batch_size, transform, seed

  def __len__(self) -> int:
    return -(-self.rows.num_rows // self.batch_size)

  def __iter__(self):
    return (self[k] for k in range(len(self)))

  def __getitem__(self, k: int) -> dict:
    if not 0 <= k < len(self):
      raise IndexError(f"evaluation batch {k} of {len(self)}")
    start = k * self.batch_size
    index = np.arange(start, min(start + self.batch_size, self.rows.num_rows), dtype=np.int64)
    batch = {}
    for key, value in self.rows.get(index).items():
      pad = self.batch_size - value.shape[0]
      batch[key] = np.concatenate([value, np.zeros((pad, *value.shape[1:]), value.dtype)]) if pad else value
    return batch if self.transform is None else self.transform(batch, transform_rng(self.seed, k, 0))
