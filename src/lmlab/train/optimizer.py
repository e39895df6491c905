"""AdamW with linear warmup then cosine decay, global-norm clipping and masked weight decay."""

import re

import flax.linen as nn
import jax
import numpy as np
import optax

_LAYER_KEY = re.compile(r"^(?:block|layer)_(\d+)$")
_EMBEDDING_KEYS = ("embed", "pos_embed", "token_type_embed")


def learning_rate_schedule(optim_cfg, num_steps: int, warmup_steps: int | None = None) -> optax.Schedule:
  """Linear warmup over warmup_steps (default optim_cfg.warmup_steps), then cosine decay to num_steps."""
  warmup_steps = optim_cfg.warmup_steps if warmup_steps is None else warmup_steps
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=optim_cfg.lr,
      warmup_steps=warmup_steps,
      decay_steps=max(num_steps, warmup_steps + 1),
      end_value=optim_cfg.lr * optim_cfg.final_lr_fraction)


def decay_mask(boxed_params):
  """True for matrices that get weight decay: not norms, biases, embeddings or position tables.

  Decided from the logical axis names each parameter carries, so it holds for any model family:
  a leaf decays when it has two or more non-'layers' axes, none of them is 'vocab' (token embeddings
  and the output projection), and it is not a bias, a norm scale, an embedding table (any nn.Embed: the
  token-type embedding too) or a position table (learned positions, T5's relative position bias).
  """

  def decays(path, leaf):
    names = [n for n in getattr(leaf, "names", ()) if n != "layers"]
    keys = [str(getattr(p, "key", p)).lower() for p in path]
    return (len(names) >= 2 and "vocab" not in names and keys[-1] not in ("bias", "scale", "embedding")
            and not any(k.startswith(("pos", "relative")) for k in keys))

  return jax.tree_util.tree_map_with_path(
      decays, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def layer_lr_scales(boxed_params, num_layers: int, layer_decay: float = 1.0, freeze_body: bool = False):
  """Per-parameter learning-rate multipliers for fine-tuning, a tree like the params.

  Depth: the embeddings are layer 0, block/layer i is i + 1 (a scanned `blocks` stack gets one scale per
  layer slice), any other body parameter (final norms, ...) num_layers, and everything outside the
  classifier's `body` (the task head) num_layers + 1, which keeps the full rate. The multiplier is
  layer_decay ** (num_layers + 1 - depth), and 0 for the body when freeze_body.
  """
  top = num_layers + 1

  def scale(path, leaf):
    keys = [str(getattr(p, "key", p)) for p in path]
    if keys[0] == "head":  # the classifier's head; a model without one is all body (generation)
      return np.float32(1.0)
    if freeze_body:
      return np.float32(0.0)
    depth = num_layers
    for key in keys:
      match = _LAYER_KEY.match(key)
      if match:
        depth = int(match.group(1)) + 1
      elif key in _EMBEDDING_KEYS:
        depth = 0
    if "blocks" in keys:  # layer-stacked params [num_layers, ...]: a scale per slice
      shape = (num_layers,) + (1,) * (np.ndim(nn.unbox(leaf)) - 1)
      return (layer_decay ** (top - 1 - np.arange(num_layers))).astype(np.float32).reshape(shape)
    return np.float32(layer_decay ** (top - depth))

  return jax.tree_util.tree_map_with_path(scale, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its entry of `scales` (a tree like the params; arrays broadcast)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(optim_cfg, schedule: optax.Schedule, boxed_params, lr_scales=None
                   ) -> optax.GradientTransformation:
  """AdamW at the learning rate `schedule` (see learning_rate_schedule). lr_scales: optional
  per-parameter multipliers of the learning rate (see layer_lr_scales); they scale the whole AdamW
  update, decoupled weight decay included, so a 0 freezes a parameter."""
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay, mask=decay_mask(boxed_params)))
  if lr_scales is not None:
    parts.append(scale_by_tree(lr_scales))
  return optax.chain(*parts)
