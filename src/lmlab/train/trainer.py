"""Binds model, optimizer and mesh into jitted, sharded train/eval steps and creates the train state."""

import functools

import flax.linen as nn
import jax
import optax
from jax.sharding import PartitionSpec as P

from lmlab import config as config_lib
from lmlab import models, objectives
from lmlab.models import transformer
from lmlab.objectives.base import TOKENS, LossTerm
from lmlab.train import optimizer, partitioning, step

# Config fields that never change the compiled steps: trainers that differ only in these are shared.
_NOT_COMPILED = ("workdir", "name", "sample", "mesh", "init_from", "task", "finetune", "tokenizer", "data.source",
                 "data.tfds_name", "data.tfds_data_dir", "data.text_key", "data.tfds_download",
                 "data.tfds_manual_dir", "data.train_split", "data.eval_split", "data.eval_dedup", "data.text_glob",
                 "data.text_unit", "data.text_eval_percent", "data.prefetch", "data.max_unknown_rate",
                 "train.log_every", "train.eval_every", "train.eval_batches", "train.checkpoint_every",
                 "train.keep_checkpoints", "train.lock_wait_s")


class Trainer:
  """Holds the static pieces of training; its attributes are the jitted steps.

  Parameters and optimizer state are sharded by the logical-axis rules, batches over data x fsdp; jit's
  in/out shardings carry the mesh (no global mesh context), and the train state is donated. Use
  `get_trainer`, which shares one Trainer (and so its compiled steps) between equal requests.
  """

  def __init__(self, cfg, vocab_size: int, mesh, *, num_classes: int = 0, pooling: str = "last",
               span: bool = False, freeze_body: bool = False, layer_decay: float = 1.0,
               num_steps: int | None = None, warmup_steps: int | None = None,
               loss_terms: tuple[LossTerm, ...] | None = None):
    """num_classes > 0 / span: the family's model as the body of a classifier / span extractor
    (models.build); layer_decay and freeze_body: per-layer learning rates (optimizer.layer_lr_scales);
    num_steps / warmup_steps: the schedule's length (default cfg.train.num_steps, cfg.optim.warmup_steps);
    loss_terms: default the objective's, the task's targets alone (TOKENS) for a task head; evaluation
    adds the objective's diagnostic eval_terms to the default."""
    self.mesh, self.seq_len = mesh, cfg.data.seq_len
    self.targets_length = None if num_classes or span else models.targets_length(cfg)  # decoder tokens per row
    self.model = models.build(cfg, vocab_size, num_classes, pooling, freeze_body, span)
    num_steps = cfg.train.num_steps if num_steps is None else num_steps
    warmup_steps = cfg.optim.warmup_steps if warmup_steps is None else warmup_steps
    eval_terms = loss_terms
    if loss_terms is None:
      objective = objectives.get(cfg.objective.name)
      task_head = num_classes or span
      loss_terms = (TOKENS,) if task_head else objective.loss_terms(cfg)
      eval_terms = (TOKENS,) if task_head else objective.evaluation_terms(cfg)
    self.eval_terms = eval_terms  # what eval_step sums: evaluate.evaluate's `terms`
    self.schedule = optimizer.learning_rate_schedule(cfg.optim, num_steps, warmup_steps)
    rows = cfg.data.batch_size // cfg.optim.grad_accum_steps
    self._dummy_inputs = models.dummy_inputs(self.model, rows, cfg.data.seq_len)

    # Logical axis names live on the boxed parameters; the state itself holds plain arrays.
    boxed_params = jax.eval_shape(self._init_params, jax.random.PRNGKey(0))
    scales = None
    if layer_decay != 1.0 or freeze_body:
      scales = optimizer.layer_lr_scales(boxed_params, cfg.model.num_layers, layer_decay, freeze_body)
    self.tx = optimizer.make_optimizer(cfg.optim, self.schedule, boxed_params, scales)
    param_specs = nn.get_partition_spec(boxed_params)
    abstract_params = nn.unbox(boxed_params)
    opt_specs = optax.tree_map_params(
        self.tx, lambda _, spec: spec, jax.eval_shape(self.tx.init, abstract_params), param_specs,
        transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
    specs = step.TrainState(step=P(), params=param_specs, opt_state=opt_specs, finite=P())
    self.state_sharding = nn.logical_to_mesh_sharding(specs, mesh, partitioning.LOGICAL_RULES)
    self.abstract_state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        jax.eval_shape(self._init_state, jax.random.PRNGKey(0)), self.state_sharding)

    batch_sharding = partitioning.batch_sharding(mesh)
    replicated = partitioning.replicated(mesh)
    self.init_state = jax.jit(self._init_state, out_shardings=self.state_sharding)
    train_fn = functools.partial(
        step.train_step, model=self.model, tx=self.tx, schedule=self.schedule, seed=cfg.seed,
        grad_accum_steps=cfg.optim.grad_accum_steps, use_dropout=cfg.model.dropout_rate > 0, terms=loss_terms)
    self.train_step = jax.jit(train_fn, in_shardings=(self.state_sharding, batch_sharding),
                              out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    self.eval_step = jax.jit(functools.partial(step.eval_step, model=self.model, terms=eval_terms),
                             in_shardings=(self.state_sharding.params, batch_sharding),
                             out_shardings=replicated)
    # The model's outputs (logits, ...) on a batch: classification and decoding read them directly.
    self.outputs = jax.jit(lambda params, batch: models.apply(self.model, {"params": params}, batch),
                           in_shardings=(self.state_sharding.params, batch_sharding), out_shardings=replicated)
    # Per row: the summed log-probability of its weighted targets (scoring generated outputs).
    self.target_log_probs = jax.jit(functools.partial(step.target_log_probs, model=self.model),
                                    in_shardings=(self.state_sharding.params, batch_sharding),
                                    out_shardings=replicated)
    self.fresh_state = jax.jit(lambda params: step.new_state(params, self.tx), out_shardings=self.state_sharding)

  def _init_params(self, rng):
    return self.model.init(rng, *self._dummy_inputs)["params"]

  def _init_state(self, rng):
    return step.new_state(nn.unbox(self._init_params(rng)), self.tx)

  def param_count(self) -> int:
    return transformer.param_count(self.abstract_state.params)

  def flops_per_token(self) -> float:
    return models.flops_per_token(self.model, self.seq_len, self.abstract_state.params, self.targets_length)


def _compiled_fields(cfg) -> str:
  """cfg as JSON without the fields in _NOT_COMPILED: the part of a config a Trainer depends on."""
  return config_lib.json_without(cfg, _NOT_COMPILED)


_TRAINERS: dict = {}
_MAX_TRAINERS = 16


def get_trainer(cfg, vocab_size: int, mesh, **options) -> Trainer:
  """A Trainer for (cfg, vocab_size, mesh, options), shared with every earlier equal request in this
  process, so repeated runs (tests, sampling after training, fine-tuning's pretrained-weight loading)
  compile once. JAX caches compiled steps per jitted function: a new Trainer would compile again."""
  key = (_compiled_fields(cfg), vocab_size, mesh, tuple(sorted(options.items())))
  if key not in _TRAINERS:
    if len(_TRAINERS) >= _MAX_TRAINERS:
      _TRAINERS.pop(next(iter(_TRAINERS)))  # the oldest
    _TRAINERS[key] = Trainer(cfg, vocab_size, mesh, **options)
  return _TRAINERS[key]
