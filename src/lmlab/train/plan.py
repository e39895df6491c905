"""The memory and cost plan of a pretraining run before it starts: `python launch.py plan --config ...`.

Compiles the train step for the configured mesh ahead of time, without data, parameters or training
(abstract inputs only), and reads XLA's memory analysis (per device: arguments, i.e. the train state and
batch; outputs; temporaries such as activations, gradients and workspace; the peak) and cost analysis
(FLOPs per device). Beside them: the model FLOPs per step (train/trainer.py's count), and the step time
and run time that a given model FLOPs utilization would give against the devices' peak
(train/hardware.py). The capacity is the device's own (memory_stats' bytes_limit on GPU/TPU) or
--device_memory_gb; a plan whose peak does not fit is an error.
"""

import time

import jax
import numpy as np

from lmlab import config as config_lib
from lmlab import objectives
from lmlab.errors import ConfigError
from lmlab.train import hardware, partitioning, trainer

GIB = 2.0**30


def _bytes_per_device(tree) -> int:
  """Bytes of one device's shards of an abstract tree (ShapeDtypeStructs with shardings)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize for leaf in leaves)


def plan(cfg, device_memory_gb: float | None = None, mfu: float = 0.4) -> dict:
  """The plan's figures (see the module docstring); raises ConfigError for a config that cannot run."""
  if cfg.get("task") is not None:
    raise ConfigError("plan covers pretraining configs (experiments/gpt.py, bert.py, t5.py, lstm.py).")
  if cfg.model.family == "ngram":
    raise ConfigError("config.model.family = 'ngram' has no train step to plan: it counts n-grams on the CPU.")
  if not 0 < mfu <= 1:
    raise ConfigError(f"--mfu {mfu} must be in (0, 1].")
  config_lib.validate(cfg, jax.device_count(), jax.process_count())
  mesh = partitioning.make_mesh(config_lib.mesh_shape(cfg, jax.device_count()))
  vocab_size = cfg.tokenizer.vocab_size
  trn = trainer.get_trainer(cfg, vocab_size, mesh)
  spec = objectives.get(cfg.objective.name).data(cfg, vocab_size).spec(cfg.data.batch_size)
  batch_sharding = partitioning.batch_sharding(mesh)
  batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding) for name, (shape, dtype) in spec.items()}
  start = time.perf_counter()
  compiled = trn.train_step.lower(trn.abstract_state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  devices = list(mesh.devices.flat)
  peak, peak_source = hardware.peak_flops(devices)
  capacity = devices[0].memory_stats() or {}
  capacity = capacity.get("bytes_limit") or (device_memory_gb * GIB if device_memory_gb else None)
  # XLA's own peak can leave out temporaries (its CPU heap simulation does): never report less than
  # everything live at once, the state and batch, the outputs that do not reuse them, and the temporaries.
  peak_memory = max(getattr(memory, "peak_memory_in_bytes", 0),
                    memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                    + memory.temp_size_in_bytes)
  tokens = cfg.data.batch_size * cfg.data.seq_len
  model_flops = trn.flops_per_token() * tokens
  step_s = model_flops / (peak * mfu) if peak else None
  return {
      "mesh": dict(mesh.shape), "devices": len(devices), "platform": devices[0].platform,
      "device_kind": devices[0].device_kind, "compile_s": compile_s, "parameters": trn.param_count(),
      "params_bytes": _bytes_per_device(trn.abstract_state.params),
      "opt_state_bytes": _bytes_per_device(trn.abstract_state.opt_state),
      "batch_bytes": _bytes_per_device(batch), "argument_bytes": memory.argument_size_in_bytes,
      "output_bytes": memory.output_size_in_bytes, "alias_bytes": memory.alias_size_in_bytes,
      "temp_bytes": memory.temp_size_in_bytes, "peak_bytes": peak_memory, "capacity_bytes": capacity,
      "fits": None if capacity is None else peak_memory <= capacity, "tokens_per_step": tokens,
      "model_flops_per_step": model_flops, "xla_flops_per_device": float(cost.get("flops", 0.0)),
      "peak_flops": peak, "peak_source": peak_source, "mfu": mfu, "step_s": step_s,
      "run_s": None if step_s is None else step_s * cfg.train.num_steps, "num_steps": cfg.train.num_steps,
      "dtype": cfg.model.dtype, "scan_layers": bool(cfg.model.get("scan_layers", False)),
  }


def _size(n: float) -> str:
  for unit, scale in (("GiB", GIB), ("MiB", 2.0**20), ("KiB", 2.0**10)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n:.0f} B"


def _flop(n: float) -> str:
  return f"{n / 1e12:.2f} TFLOP" if n >= 1e11 else f"{n / 1e9:.3f} GFLOP"


def _duration(seconds: float) -> str:
  if seconds < 1:
    return f"{seconds * 1e3:.1f} ms"
  if seconds < 120:
    return f"{seconds:.1f} s"
  return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def describe(p: dict) -> str:
  """The plan as the lines launch.py prints."""
  mesh = " x ".join(f"{axis} {size}" for axis, size in p["mesh"].items())
  lines = [
      f"Plan: {p['devices']} {p['platform']} device(s) ({p['device_kind']}), mesh {mesh}; train step compiled in "
      f"{p['compile_s']:.1f} s (no training)",
      f"  parameters       {p['parameters']:,} ({p['dtype']} compute); per device {_size(p['params_bytes'])}",
      f"  optimizer state  per device {_size(p['opt_state_bytes'])}",
      f"  batch            {p['tokens_per_step']:,} tokens per step; per device {_size(p['batch_bytes'])}",
      f"  XLA per device   arguments {_size(p['argument_bytes'])}, outputs {_size(p['output_bytes'])} (of which "
      f"{_size(p['alias_bytes'])} reuse donated arguments), temporaries {_size(p['temp_bytes'])} "
      "(activations, gradients, workspace)",
  ]
  if p["capacity_bytes"] is None:
    fit = "(capacity unknown: give --device_memory_gb)"
  else:
    fit = f"of {_size(p['capacity_bytes'])}: {'fits' if p['fits'] else 'DOES NOT FIT'}"
  lines.append(f"  peak memory      per device {_size(p['peak_bytes'])} {fit}")
  lines.append(f"  compute          {_flop(p['model_flops_per_step'])} model FLOPs per step, "
               f"{_flop(p['model_flops_per_step'] / p['devices'])} per device (XLA's count: "
               f"{_flop(p['xla_flops_per_device'])} per device"
               + (", the scanned layer stack counted once)" if p["scan_layers"] else ")"))
  if p["step_s"] is None:
    lines.append(f"  step time        unknown: {p['peak_source']}")
  else:
    lines.append(f"  step time        {_duration(p['step_s'])} at {p['mfu']:.0%} MFU of {p['peak_flops'] / 1e12:.2f} "
                 f"TFLOP/s ({p['peak_source']}); {p['num_steps']:,} steps: {_duration(p['run_s'])}")
  return "\n".join(lines)


def check_fits(p: dict) -> None:
  if p["fits"] is False:
    raise ConfigError(
        f"the train step needs {p['peak_bytes'] / GIB:.2f} GiB per device, more than the "
        f"{p['capacity_bytes'] / GIB:.2f} GiB available: shard more (config.mesh.fsdp), accumulate gradients "
        "(config.optim.grad_accum_steps), remat activations (config.model.remat), or lower config.data.batch_size.")
