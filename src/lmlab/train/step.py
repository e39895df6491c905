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

from lmlab import models
from lmlab.objectives import losses


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  # Every loss and gradient norm so far was finite: a device-side flag the loops read at log steps and
  # before every save, so a divergence costs no extra host sync per step (a saved state holds True).
  finite: jax.Array


def new_state(params, tx) -> TrainState:
  """Step 0 of training `params` with optimizer `tx`."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    finite=jnp.ones((), bool))


def _loss_and_sums(params, batch, norms, *, model, rng, terms):
  deterministic = rng is None
  outputs = models.apply(model, {"params": params}, batch, deterministic=deterministic,
                         rngs=None if deterministic else {"dropout": rng})
  sums = losses.loss_sums(outputs, batch, terms)
  return losses.total_loss(sums, norms, terms), sums


def train_step(state: TrainState, batch, *, model, tx, schedule, seed: int, grad_accum_steps: int,
               use_dropout: bool, terms: tuple[losses.LossTerm, ...]):
  """One optimizer update on a global batch, accumulating gradients over micro-batches.

  Each micro-batch's loss is normalized by the whole batch's weights (known from the data before any
  compute), so the summed gradient is that of the batch's mean loss, whatever the split into
  micro-batches. Dropout keys are a function of (seed, step), so a resumed run repeats them exactly.
  `terms` are the objective's loss terms (objectives/base.py), with their scales.
  """
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step) if use_dropout else None
  norms = losses.normalizers(batch, terms)
  grad_fn = jax.grad(functools.partial(_loss_and_sums, model=model, terms=terms), has_aux=True)

  def micro_step(carry, xs):
    grads_acc, sums_acc = carry
    micro_batch, micro_index = xs
    micro_rng = None if rng is None else jax.random.fold_in(rng, micro_index)
    grads, sums = grad_fn(state.params, micro_batch, norms, rng=micro_rng)
    grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
    sums_acc = jax.tree_util.tree_map(jnp.add, sums_acc, sums)
    return (grads_acc, sums_acc), None

  if grad_accum_steps == 1:
    grads, sums = grad_fn(state.params, batch, norms, rng=rng)
  else:
    micro_batches = jax.tree_util.tree_map(
        lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]), batch)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    zero_sums = {k: jnp.zeros((), jnp.float32) for k in losses.sum_keys(terms)}
    (grads, sums), _ = jax.lax.scan(micro_step, (zeros, zero_sums),
                                    (micro_batches, jnp.arange(grad_accum_steps)))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(losses.metrics(sums, terms), grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
  finite = state.finite & jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
  metrics["finite"] = finite  # also here: the state's buffers are donated to the next step
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, finite=finite), metrics


def eval_step(params, batch, *, model, terms: tuple[losses.LossTerm, ...]):
  """Loss sums of every term (loss, weight, correct predictions) over the real targets."""
  outputs = models.apply(model, {"params": params}, batch, deterministic=True)
  return losses.loss_sums(outputs, batch, terms)


def target_log_probs(params, batch, *, model):
  """float32 [B]: each row's sum of log p(target) over its weighted target positions."""
  logits = models.apply(model, {"params": params}, batch, deterministic=True)["logits"].astype(jnp.float32)
  log_p = -optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  return jnp.sum((log_p * batch["weights"]).reshape(log_p.shape[0], -1), axis=1)
