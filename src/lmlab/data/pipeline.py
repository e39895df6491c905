"""The train and eval batch streams over a split's rows (packed rows, see packing.py, or an objective's
own rows), with the objective's seeded transform applied per batch.

Shape suffixes: B batch rows (this process's share), R rows of the split; digits are literal sizes.
"""

from typing import Callable, Iterator

import numpy as np
import tensorflow as tf


def train_dataset(rows: dict, batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                  prefetch: int = 2, transform: Callable[[dict, np.random.Generator], dict] | None = None,
                  spec: dict | None = None) -> tf.data.Dataset:
  """Endless batches of `batch_size` rows (this process's share of the global batch), reshuffled every
  epoch. Batch `step` is a pure function of (seed, step, process_index): resuming at start_step yields
  exactly what an uninterrupted run would have, without replaying earlier batches.

  `rows` is a dict of arrays with a common leading axis R (packed rows, or an objective's pair rows).
  Example i (= step * batch_size + b) is row index_shuffle(i % R, seed=[seed, i // R, process_index]):
  a stateless permutation of the R rows per epoch, so every row is seen once per epoch. The objective's
  `transform(batch, rng)` (numpy) then runs with rng = transform_rng(seed, step, process_index); `spec`
  gives its outputs' {name: (shape, dtype)}.
  """
  num_rows = _num_rows(rows)
  if num_rows == 0:
    raise ValueError("train_dataset needs at least one row; the training split has no tokens.")
  rows_R = {key: tf.constant(value) for key, value in rows.items()}

  def gather_batch(index_B):
    epoch_B = index_B // num_rows
    seed_B3 = tf.stack([tf.fill(tf.shape(index_B), tf.constant(seed, tf.int64)), epoch_B,
                        tf.fill(tf.shape(index_B), tf.constant(process_index, tf.int64))], axis=1)
    # The raw op takes a 3-word key; the public tf.random.experimental.index_shuffle takes 2 and pads it
    # with a constant, which would leave no room for the process index.
    row_B = tf.raw_ops.RandomIndexShuffle(
        index=index_B % num_rows, seed=seed_B3,
        max_index=tf.fill(tf.shape(index_B), tf.constant(num_rows - 1, tf.int64)), rounds=4)
    return index_B[0] // batch_size, {key: tf.gather(value, row_B) for key, value in rows_R.items()}

  # Batch the indices first: one vectorized shuffle + gather per batch is much cheaper than per row.
  ds = tf.data.Dataset.range(start_step * batch_size, 2**62)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(gather_batch, num_parallel_calls=tf.data.AUTOTUNE)
  if transform is None:
    ds = ds.map(lambda step, batch: batch)
  else:
    names = sorted(spec)

    def run(step, *values):
      batch = dict(zip(sorted(rows_R), values))
      out = transform(batch, transform_rng(seed, int(step), process_index))
      return [np.asarray(out[name], spec[name][1]) for name in names]

    def apply(step, batch):
      outs = tf.numpy_function(run, [step] + [batch[key] for key in sorted(rows_R)],
                               [tf.as_dtype(spec[name][1]) for name in names], stateful=False)
      return {name: tf.ensure_shape(out, spec[name][0]) for name, out in zip(names, outs)}

    ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(prefetch)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def transform_rng(seed: int, step: int, process_index: int) -> np.random.Generator:
  """The objective transform's generator for one batch: a pure function of (seed, step, process)."""
  return np.random.default_rng([seed, step, process_index])


def _num_rows(rows: dict) -> int:
  return next(iter(rows.values())).shape[0]


def eval_batches(rows: dict, batch_size: int, num_batches: int | None = None,
                 transform: Callable[[dict, np.random.Generator], dict] | None = None, seed: int = 0) -> Iterator[dict]:
  """The rows in order, once, as numpy batches; the last batch is filled with all-zero rows (padding:
  weight 0). With num_batches, exactly that many batches: truncated, or extended with all-padding
  batches (multi-process eval needs every process to run the same number of steps). The transform's
  rng for batch k is transform_rng(seed, k, 0), so every evaluation sees the same masks."""
  num_rows = _num_rows(rows)
  if num_batches is None:
    num_batches = -(-num_rows // batch_size)
  for k, start in enumerate(range(0, num_batches * batch_size, batch_size)):
    batch = {}
    for key, value in rows.items():
      part = value[start:start + batch_size]
      pad = batch_size - part.shape[0]
      if pad:
        part = np.concatenate([part, np.zeros((pad, *value.shape[1:]), value.dtype)])
      batch[key] = part
    yield batch if transform is None else transform(batch, transform_rng(seed, k, 0))
