"""Evaluation of a train state's parameters on fixed validation batches: the objective's loss terms
summed over every process's batches, then loss, perplexity and accuracy per term."""

import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from lmlab.objectives import losses
from lmlab.train import partitioning


def evaluate(trn, params, local_batches: Sequence[dict], terms: tuple[losses.LossTerm, ...],
             max_batches: int = 0) -> dict:
  """Weighted loss, perplexity and accuracy of each loss term (the objective's targets: next tokens,
  masked tokens...; next sentences) over the validation batches of every process; `local_batches` are
  this process's share (a list, or data.pipeline.EvalBatches, which makes each batch when indexed), `trn` a
  train.trainer.Trainer (its eval_step), max_batches 0: all."""
  count = len(local_batches)
  if jax.process_count() > 1:  # every process must run the same number of steps
    count = int(np.max(multihost_utils.process_allgather(np.asarray(count))))
  if max_batches:
    count = min(count, max_batches)
  empty = {k: np.zeros_like(v) for k, v in local_batches[0].items()}
  totals = None
  for i in range(count):
    batch = partitioning.global_batch(local_batches[i] if i < len(local_batches) else empty, trn.mesh)
    sums = trn.eval_step(params, batch)
    totals = sums if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, sums)
  result = {k: float(v) for k, v in jax.device_get(losses.metrics(totals, terms)).items()}
  return dict(result, perplexity=math.exp(min(result["loss"], 50.0)))


def describe(result: dict) -> str:
  """One line of evaluation metrics."""
  text = f"loss {result['loss']:.4f} | perplexity {result['perplexity']:.2f}"
  for key in ("accuracy", "nsp_accuracy"):
    if key in result:
      text += f" | {key.replace('_', ' ')} {result[key]:.3f}"
  if "mask_loss" in result:  # masked LM: the loss by what the input showed at the target
    text += (f" | loss at [MASK] {result['mask_loss']:.3f} / random {result['random_loss']:.3f} / "
             f"unchanged {result['kept_loss']:.3f}")
  return text
