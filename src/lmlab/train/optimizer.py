"""AdamW with linear warmup then cosine decay, global-norm clipping and masked weight decay."""

import flax.linen as nn
import jax
import optax


def learning_rate_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=optim_cfg.lr,
      warmup_steps=optim_cfg.warmup_steps,
      decay_steps=max(num_steps, optim_cfg.warmup_steps + 1),
      end_value=optim_cfg.lr * optim_cfg.final_lr_fraction)


def decay_mask(boxed_params):
  """True for matrices that get weight decay: not norms, biases, embeddings or position tables.

  Decided from the logical axis names each parameter carries, so it holds for any model family:
  a leaf decays when it has two or more non-'layers' axes, none of them is 'vocab' (token embeddings
  and the output projection), and it is not a bias, a norm scale or a position table.
  """

  def decays(path, leaf):
    names = [n for n in getattr(leaf, "names", ()) if n != "layers"]
    keys = [str(getattr(p, "key", p)).lower() for p in path]
    return (len(names) >= 2 and "vocab" not in names and keys[-1] not in ("bias", "scale")
            and not any(k.startswith("pos") for k in keys))

  return jax.tree_util.tree_map_with_path(
      decays, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def make_optimizer(optim_cfg, num_steps: int, boxed_params) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(optim_cfg, num_steps)
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay, mask=decay_mask(boxed_params)))
  return optax.chain(*parts)
