"""The train state and the pure, jit-able train and eval steps.

`train_step(state, batch) -> (state, metrics)` once its static pieces (model, optimizer, schedule) are
bound with functools.partial; `Trainer` below binds them and jits with mesh shardings.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from lmlab import objectives


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _loss_and_sums(params, batch, *, model, rng):
  deterministic = rng is None
  logits_BLV = model.apply(
      {"params": params}, batch["tokens"], batch["segment_ids"], batch["positions"],
      deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
  targets_BL, weights_BL = objectives.causal_lm_targets(batch["tokens"], batch["segment_ids"])
  sums = objectives.cross_entropy_sums(logits_BLV, targets_BL, weights_BL)
  return sums["loss_sum"], sums


def train_step(state: TrainState, batch, *, model, tx, schedule, seed: int, grad_accum_steps: int,
               use_dropout: bool):
  """One optimizer update on a global batch, accumulating gradients over micro-batches.

  The gradient is that of the token-weighted mean loss over the whole batch, whatever the split into
  micro-batches. Dropout keys are a function of (seed, step), so a resumed run repeats them exactly.
  """
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step) if use_dropout else None
  grad_fn = jax.grad(functools.partial(_loss_and_sums, model=model), has_aux=True)

  def micro_step(carry, xs):
    grads_acc, sums_acc = carry
    micro_batch, micro_index = xs
    micro_rng = None if rng is None else jax.random.fold_in(rng, micro_index)
    grads, sums = grad_fn(state.params, micro_batch, rng=micro_rng)
    grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
    sums_acc = jax.tree_util.tree_map(jnp.add, sums_acc, sums)
    return (grads_acc, sums_acc), None

  if grad_accum_steps == 1:
    grads, sums = grad_fn(state.params, batch, rng=rng)
  else:
    micro_batches = jax.tree_util.tree_map(
        lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]), batch)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    zero_sums = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "weight_sum", "correct_sum")}
    (grads, sums), _ = jax.lax.scan(micro_step, (zeros, zero_sums),
                                    (micro_batches, jnp.arange(grad_accum_steps)))
  weight = jnp.maximum(sums["weight_sum"], 1.0)
  grads = jax.tree_util.tree_map(lambda g: g / weight, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": sums["loss_sum"] / weight,
      "accuracy": sums["correct_sum"] / weight,
      "tokens": sums["weight_sum"],
      "grad_norm": optax.tree.norm(grads),
      "lr": schedule(state.step),
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch, *, model):
  """Sums of loss, weight and correct predictions over the real (non-padding) target tokens."""
  _, sums = _loss_and_sums(params, batch, model=model, rng=None)
  return sums
