"""The train and eval batch streams over a split's rows (packed rows, see packing.py, or an objective's
own rows), with the objective's seeded transform applied per batch.

Rows are read on demand (packing.Rows: a row count and get(index) -> arrays), never materialized whole,
so the memory of a run does not grow with its corpus. Shape suffixes: B batch rows (this process's share),
R rows of the split.
"""

from typing import Callable

import numpy as np
import tensorflow as tf

from lmlab.data import packing


def as_rows(rows) -> packing.Rows:
  return packing.ArrayRows(rows) if isinstance(rows, dict) else rows


def train_dataset(rows, batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                  prefetch: int = 2, transform: Callable[[dict, np.random.Generator], dict] | None = None,
                  spec: dict | None = None) -> tf.data.Dataset:
  """Endless batches of `batch_size` rows (this process's share of the global batch), reshuffled every
  epoch. Batch `step` is a pure function of (seed, step, process_index): resuming at start_step yields
  exactly what an uninterrupted run would have, without replaying earlier batches.

  `rows` is a Rows (or a dict of arrays with a common leading axis R). Example i (= step * batch_size +
  b) is row index_shuffle(i % R, seed=[seed, i // R, process_index]): a stateless permutation of the R
  rows per epoch, so every row is seen once per epoch. The rows are read, then the objective's
  `transform(batch, rng)` (numpy) runs with rng = transform_rng(seed, step, process_index); `spec` gives
  its outputs' {name: (shape, dtype)}.
  """
  rows = as_rows(rows)
  num_rows = rows.num_rows
  if num_rows == 0:
    raise ValueError("train_dataset needs at least one row; the training split has no tokens.")
  if transform is None:
    transform = lambda batch, rng: batch
    spec = {k: (v.shape, v.dtype) for k, v in rows.get(np.zeros(batch_size, np.int64)).items()}
  names = sorted(spec)

  def shuffled(index_B):
    epoch_B = index_B // num_rows
    seed_B3 = tf.stack([tf.fill(tf.shape(index_B), tf.constant(seed, tf.int64)), epoch_B,
                        tf.fill(tf.shape(index_B), tf.constant(process_index, tf.int64))], axis=1)
    # The raw op takes a 3-word key; the public tf.random.experimental.index_shuffle takes 2 and pads it
    # with a constant, which would leave no room for the process index.
    row_B = tf.raw_ops.RandomIndexShuffle(
        index=index_B % num_rows, seed=seed_B3,
        max_index=tf.fill(tf.shape(index_B), tf.constant(num_rows - 1, tf.int64)), rounds=4)
    return index_B[0] // batch_size, row_B

  def read(step, row_B):
    out = transform(rows.get(row_B), transform_rng(seed, int(step), process_index))
    return [np.asarray(out[name], spec[name][1]) for name in names]

  def apply(step, row_B):
    outs = tf.numpy_function(read, [step, row_B], [tf.as_dtype(spec[name][1]) for name in names],
                             stateful=False)
    return {name: tf.ensure_shape(out, spec[name][0]) for name, out in zip(names, outs)}

  # Batch the indices first: one vectorized shuffle and one row read + transform per batch.
  ds = tf.data.Dataset.range(start_step * batch_size, 2**62)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(shuffled).map(apply, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(prefetch)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


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
