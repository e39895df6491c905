"""Pretraining objectives: targets, loss weights and the token-weighted loss.

Losses return sums plus the weight they were summed over (flax lm1b style); callers divide at the end,
so padding and uneven micro-batches never skew a mean.
"""

import jax.numpy as jnp
import optax


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
