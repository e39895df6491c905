"""Pretraining losses: token-weighted cross-entropy on the targets the data transforms prepared, plus the
next-sentence loss of BERT's mlm_nsp.

Every objective's batch carries `targets` and float `weights` (1 where a target is predicted: the next
token for causal / prefix LM, the original token at selected positions for masked LM); mlm_nsp adds
`nsp_labels` and `nsp_weights` (0 on padding rows). Losses return sums (flax lm1b style); the train step
divides by normalizers taken from the whole batch before any micro-batching, so padding and uneven
micro-batches never skew a mean.
"""

import jax.numpy as jnp
import optax

SUM_KEYS = ("loss_sum", "weight_sum", "correct_sum")
NSP_SUM_KEYS = ("nsp_loss_sum", "nsp_weight_sum", "nsp_correct_sum")


def causal_lm_targets(tokens_BL, segment_ids_BL):
  """Next-token targets for packed rows; weight 0 where the next token is padding or another document."""
  targets_BL = jnp.roll(tokens_BL, -1, axis=1)
  next_segment_BL = jnp.roll(segment_ids_BL, -1, axis=1)
  weights_BL = (next_segment_BL == segment_ids_BL) & (segment_ids_BL > 0)
  weights_BL = weights_BL.at[:, -1].set(False)  # the last position's target is in the next row
  return targets_BL, weights_BL.astype(jnp.float32)


def cross_entropy_sums(logits_BLV, targets_BL, weights_BL):
  """(loss sum, weight sum, correct-prediction sum) over the weighted positions; logits in float32."""
  logits_BLV = logits_BLV.astype(jnp.float32)
  loss_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
  correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(loss_BL * weights_BL),
      "weight_sum": jnp.sum(weights_BL),
      "correct_sum": jnp.sum(correct_BL * weights_BL),
  }


def loss_sums(outputs: dict, batch: dict) -> dict:
  """Sums of every loss term the model's outputs allow (see the module docstring)."""
  sums = cross_entropy_sums(outputs["logits"], batch["targets"], batch["weights"])
  if "nsp_logits" in outputs:
    nsp = cross_entropy_sums(outputs["nsp_logits"][:, None], batch["nsp_labels"][:, None],
                             batch["nsp_weights"][:, None])
    sums.update({f"nsp_{k}": v for k, v in nsp.items()})
  return sums


def sum_keys(batch: dict) -> tuple[str, ...]:
  """The keys of loss_sums() for this batch layout."""
  return SUM_KEYS + (NSP_SUM_KEYS if "nsp_labels" in batch else ())


def normalizers(batch: dict) -> dict:
  """What each loss sum is divided by, from the whole (global) batch: its total weights."""
  norms = {"loss_sum": jnp.maximum(jnp.sum(batch["weights"]), 1.0)}
  if "nsp_weights" in batch:
    norms["nsp_loss_sum"] = jnp.maximum(jnp.sum(batch["nsp_weights"]), 1.0)
  return norms


def total_loss(sums: dict, norms: dict, nsp_weight: float = 1.0):
  """The scalar that is differentiated: mean token loss (+ nsp_weight x mean next-sentence loss)."""
  loss = sums["loss_sum"] / norms["loss_sum"]
  if "nsp_loss_sum" in sums:
    loss = loss + nsp_weight * sums["nsp_loss_sum"] / norms["nsp_loss_sum"]
  return loss


def metrics(sums: dict) -> dict:
  """Means from (accumulated) sums: token loss, accuracy, and next-sentence loss / accuracy."""
  weight = jnp.maximum(sums["weight_sum"], 1.0)
  out = {"loss": sums["loss_sum"] / weight, "accuracy": sums["correct_sum"] / weight,
         "tokens": sums["weight_sum"]}
  if "nsp_loss_sum" in sums:
    nsp_weight = jnp.maximum(sums["nsp_weight_sum"], 1.0)
    out.update(nsp_loss=sums["nsp_loss_sum"] / nsp_weight, nsp_accuracy=sums["nsp_correct_sum"] / nsp_weight)
  return out
