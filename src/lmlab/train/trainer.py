"""Binds model, optimizer and mesh into jitted, sharded train/eval steps and creates the train state."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from lmlab import models
from lmlab.models import recurrent, transformer
from lmlab.train import optimizer, partitioning, step


class Trainer:
  """Holds the static pieces of training; its attributes are the jitted steps.

  Parameters and optimizer state are sharded by the logical-axis rules, batches over data x fsdp; jit's
  in/out shardings carry the mesh (no global mesh context), and the train state is donated.
  """

  def __init__(self, cfg, vocab_size: int, mesh, model=None, layer_decay: float = 1.0,
               freeze_body: bool = False):
    """model: default models.build(cfg, vocab_size); fine-tuning passes its task model, and the
    layer-wise learning-rate decay / body freezing of optimizer.layer_lr_scales."""
    self.cfg, self.mesh = cfg, mesh
    self.model = models.build(cfg, vocab_size) if model is None else model
    self.schedule = optimizer.learning_rate_schedule(cfg.optim, cfg.train.num_steps)
    rows = cfg.data.batch_size // cfg.optim.grad_accum_steps
    self._dummy_inputs = models.dummy_inputs(self.model, rows, cfg.data.seq_len)

    # Logical axis names live on the boxed parameters; the state itself holds plain arrays.
    boxed_params = jax.eval_shape(self._init_params, jax.random.PRNGKey(0))
    scales = None
    if layer_decay != 1.0 or freeze_body:
      scales = optimizer.layer_lr_scales(boxed_params, cfg.model.num_layers, layer_decay, freeze_body)
    self.tx = optimizer.make_optimizer(cfg.optim, cfg.train.num_steps, boxed_params, scales)
    param_specs = nn.get_partition_spec(boxed_params)
    abstract_params = nn.unbox(boxed_params)
    opt_specs = optax.tree_map_params(
        self.tx, lambda _, spec: spec, jax.eval_shape(self.tx.init, abstract_params), param_specs,
        transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
    specs = step.TrainState(step=P(), params=param_specs, opt_state=opt_specs)
    self.state_sharding = nn.logical_to_mesh_sharding(specs, mesh, partitioning.LOGICAL_RULES)
    self.abstract_state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        jax.eval_shape(self._init_state, jax.random.PRNGKey(0)), self.state_sharding)

    batch_sharding = partitioning.batch_sharding(mesh)
    replicated = partitioning.replicated(mesh)
    self.init_state = jax.jit(self._init_state, out_shardings=self.state_sharding)
    train_fn = functools.partial(
        step.train_step, model=self.model, tx=self.tx, schedule=self.schedule, seed=cfg.seed,
        grad_accum_steps=cfg.optim.grad_accum_steps, use_dropout=cfg.model.dropout_rate > 0,
        nsp_weight=cfg.objective.nsp_weight)
    self.train_step = jax.jit(train_fn, in_shardings=(self.state_sharding, batch_sharding),
                              out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    self.eval_step = jax.jit(functools.partial(step.eval_step, model=self.model),
                             in_shardings=(self.state_sharding.params, batch_sharding),
                             out_shardings=replicated)

  def _init_params(self, rng):
    return self.model.init(rng, *self._dummy_inputs)["params"]

  def _init_state(self, rng):
    params = nn.unbox(self._init_params(rng))
    return step.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

  def param_count(self) -> int:
    return transformer.param_count(self.abstract_state.params)

  def flops_per_token(self) -> float:
    params = self.abstract_state.params
    model = getattr(self.model, "body", self.model)  # a classifier's cost is its body's (the head is tiny)
    if isinstance(model, recurrent.RecurrentLM):
      return recurrent.flops_per_token(model.config, params)
    return transformer.flops_per_token(model.config, self.cfg.data.seq_len, params)
