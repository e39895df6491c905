"""Throughput benchmark of the train step: python -m lmlab.bench [--steps N] [--shapes a,b].

Prints, per model shape, the compile time of the first step, the median step time, tokens/s, model
GFLOP/s (6N + 12*layers*d_model*seq_len FLOPs per token) and that as a fraction of this machine's float32
matmul peak, measured in the same run with a large jnp.dot. A benchmark, not a test: nothing is asserted.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmlab import config as config_lib
from lmlab.train import partitioning, trainer

SHAPES = {
    # name: (layers, d_model, heads, mlp_dim, vocab, seq_len, batch)
    "a": (4, 128, 4, 512, 65, 64, 12),
    "b": (6, 512, 8, 2048, 8192, 256, 16),
}


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
  """Best observed float32 GFLOP/s of an n x n matmul on the default device."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best / 1e9


def bench_config(shape: str):
  layers, d_model, heads, mlp_dim, vocab, seq_len, batch = SHAPES[shape]
  cfg = config_lib.default_config()
  cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads, cfg.model.mlp_dim = (
      layers, d_model, heads, mlp_dim)
  cfg.data.seq_len, cfg.data.batch_size = seq_len, batch
  cfg.tokenizer.vocab_size = vocab
  cfg.mesh.data = 1
  return cfg


def bench_shape(shape: str, steps: int) -> dict:
  cfg = bench_config(shape)
  mesh = partitioning.make_mesh((1, 1, 1), jax.devices()[:1])
  trn = trainer.Trainer(cfg, cfg.tokenizer.vocab_size, mesh)
  rng = np.random.default_rng(0)
  batch = {
      "tokens": rng.integers(0, cfg.tokenizer.vocab_size, (cfg.data.batch_size, cfg.data.seq_len), np.int32),
      "segment_ids": np.ones((cfg.data.batch_size, cfg.data.seq_len), np.int32),
      "positions": np.tile(np.arange(cfg.data.seq_len, dtype=np.int32), (cfg.data.batch_size, 1)),
  }
  batch = partitioning.global_batch(batch, mesh)
  state = trn.init_state(jax.random.PRNGKey(0))
  jax.block_until_ready(state)
  start = time.perf_counter()
  state, metrics = trn.train_step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = trn.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  tokens_per_s = cfg.data.batch_size * cfg.data.seq_len / step_s
  return {"shape": shape, "params": trn.param_count(), "compile_s": compile_s, "ms_per_step": step_s * 1e3,
          "tokens_per_s": tokens_per_s, "gflops": tokens_per_s * trn.flops_per_token() / 1e9}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20, help="timed steps per shape (after the first)")
  parser.add_argument("--shapes", default="a,b", help=f"comma-separated subset of {','.join(SHAPES)}")
  args = parser.parse_args()
  peak = matmul_peak_gflops()
  print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} "
        f"device(s), jax {jax.__version__}; float32 matmul peak {peak:.1f} GFLOP/s")
  print(f"{'shape':5} {'params':>11} {'compile s':>9} {'ms/step':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>7}")
  for shape in args.shapes.split(","):
    r = bench_shape(shape, args.steps)
    print(f"{shape:5} {r['params']:11,} {r['compile_s']:9.2f} {r['ms_per_step']:8.1f} {r['tokens_per_s']:9,.0f} "
          f"{r['gflops']:8.1f} {r['gflops'] / peak:7.1%}")


if __name__ == "__main__":
  main()
