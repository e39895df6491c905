"""What the devices can do: the peak FLOP/s that model FLOPs utilization (MFU) is measured against.

Accelerators: the published dense bfloat16 peak per chip, chosen by jax.devices()[0].device_kind (vendor
data sheets; no sparsity). CPUs have no such figure: the peak is measured as the best of a few 2048 x 2048
float32 matmuls, once per process, and the devices of one host (e.g. XLA's fake CPU devices) share it.
"""

import functools
import time

import jax
import jax.numpy as jnp

# device_kind fragment -> dense bf16 TFLOP/s per chip; the first fragment found in device_kind wins.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L4", 121.0),
    ("TPU v6 lite", 918.0),  # v6e (Trillium)
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),  # v5p reports "TPU v5"
    ("TPU v4", 275.0),
)


@functools.cache
def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
  """Best observed float32 FLOP/s of an n x n matmul on the default device (measured once per process)."""
  # A constant operand: a float32 matmul's speed does not depend on the values, and filling it is free,
  # where drawing random ones took longer than the timed matmuls (this runs before a training's first step).
  a = jnp.full((n, n), 1.0 / n, jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def peak_flops(devices=None) -> tuple[float | None, str]:
  """(peak FLOP/s of `devices` together (default: all), where that figure comes from); None for an
  accelerator without a published figure here."""
  devices = list(devices or jax.devices())
  kind = devices[0].device_kind
  for fragment, tflops in PEAK_BF16_TFLOPS:
    if fragment in kind:
      return tflops * 1e12 * len(devices), f"{len(devices)} x {kind} at {tflops:g} TFLOP/s (published dense bf16)"
  if devices[0].platform == "cpu":
    hosts = len({d.process_index for d in devices})
    peak = matmul_peak_flops()
    return peak * hosts, (f"{hosts} x this host's measured float32 matmul peak, {peak / 1e9:.0f} GFLOP/s, shared "
                          f"by its {len(devices) // hosts} cpu device(s)")
  return None, f"no published peak for {kind!r} (lmlab.train.hardware.PEAK_BF16_TFLOPS)"
