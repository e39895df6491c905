"""Losses as sums over an objective's loss terms (objectives/base.py: LossTerm), flax lm1b style.

Each term is a weighted cross-entropy of a model output against batch targets: the objective's tokens
(next tokens for causal / prefix LM, the original tokens at selected positions for masked LM, the span
targets for span corruption; class labels when fine-tuning), plus the next-sentence term of mlm_nsp. The
functions return sums; the train step divides by normalizers taken from the whole batch before any
micro-batching, so padding and uneven micro-batches never skew a mean. Logits may have any leading
shape: [B, L, V] with targets [B, L], or [B, C] with targets [B].

Shape letters (as in lmlab/__init__.py): B batch, L row length, V vocabulary, C classes.
"""

import jax.numpy as jnp
import optax

from lmlab.objectives.base import LossTerm  # noqa: F401  (re-exported for the train step)

SUMS = ("loss_sum", "weight_sum", "correct_sum")


def cross_entropy_sums(logits, targets, weights) -> dict:
  """(loss sum, weight sum, correct-prediction sum) over the weighted positions; logits in float32."""
  logits = logits.astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {"loss_sum": jnp.sum(loss * weights), "weight_sum": jnp.sum(weights),
          "correct_sum": jnp.sum(correct * weights)}


def sum_keys(terms: tuple[LossTerm, ...]) -> tuple[str, ...]:
  """The keys of loss_sums() for these terms."""
  return tuple(t.prefix + key for t in terms for key in SUMS)


def loss_sums(outputs: dict, batch: dict, terms: tuple[LossTerm, ...]) -> dict:
  """Sums of every loss term: {prefix}loss_sum, {prefix}weight_sum, {prefix}correct_sum."""
  sums = {}
  for t in terms:
    term = cross_entropy_sums(outputs[t.logits], batch[t.targets], batch[t.weights])
    sums.update({t.prefix + key: value for key, value in term.items()})
  return sums


def normalizers(batch: dict, terms: tuple[LossTerm, ...]) -> dict:
  """What each loss sum is divided by, from the whole (global) batch: its total weights."""
  return {t.prefix + "loss_sum": jnp.maximum(jnp.sum(batch[t.weights]), 1.0) for t in terms}


def total_loss(sums: dict, norms: dict, terms: tuple[LossTerm, ...]):
  """The scalar that is differentiated: the sum over terms of scale x mean term loss."""
  loss = None
  for t in terms:
    key = t.prefix + "loss_sum"
    term = t.scale * sums[key] / norms[key]
    loss = term if loss is None else loss + term
  return loss


def metrics(sums: dict, terms: tuple[LossTerm, ...]) -> dict:
  """Means from (accumulated) sums: {prefix}loss and {prefix}accuracy per term, and the main term's
  weight total as `tokens`."""
  out = {}
  for t in terms:
    weight = jnp.maximum(sums[t.prefix + "weight_sum"], 1.0)
    out[t.prefix + "loss"] = sums[t.prefix + "loss_sum"] / weight
    out[t.prefix + "accuracy"] = sums[t.prefix + "correct_sum"] / weight
    if not t.prefix:
      out["tokens"] = sums["weight_sum"]
  return out
