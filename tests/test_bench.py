"""The benchmark's code path on a tiny shape (a smoke test of the code, not of its speed): the batch comes
from each objective's own transform and the train step is training's."""

import numpy as np
import pytest

from launching import ROOT, xla_flags
from lmlab import bench
from lmlab.train import hardware


# The encoder-decoder runs through main below, the decoder through the command line (e2e).
@pytest.mark.parametrize("family,objective", [("encoder", "mlm_nsp"), ("rnn", "causal_lm")])
def test_bench_shape_runs_every_family(family, objective):
  cfg = bench.bench_config("tiny", family, objective)
  batch = bench.synthetic_batch(cfg)
  assert {"targets", "weights"} <= set(batch) and batch["weights"].sum() > 0
  result = bench.bench_shape(cfg, steps=1)
  assert np.isfinite(result["loss"]) and result["tokens_per_s"] > 0 and result["gflops"] > 0
  assert 0 < result["compile_s"] < result["first_step_s"]  # the first step adds an execution to the compile


def test_bench_main_prints_the_table_of_an_experiment_preset(capsys):
  """--config benchmarks an experiment file's own preset (here T5's tiny one: relative positions)."""
  spec = f"{ROOT}/experiments/t5.py:size=tiny"
  bench.main(["--config", spec, "--steps", "2"])
  out = capsys.readouterr().out
  assert "measured float32 matmul peak" in out and "family encoder_decoder, objective span_corruption" in out
  row = next(line for line in out.splitlines() if line.startswith(spec))
  assert len(row.split()) == 11 and row.split()[7].endswith("%")


def test_peak_flops_by_device_kind():
  """Published dense bf16 peaks for accelerators (the first matching fragment wins); CPUs are measured."""
  class Device:
    platform, process_index = "gpu", 0

    def __init__(self, kind):
      self.device_kind = kind

  assert hardware.peak_flops([Device("NVIDIA H100 80GB HBM3")] * 8)[0] == 8 * 989e12
  assert hardware.peak_flops([Device("NVIDIA H100 PCIe")])[0] == 756e12
  assert hardware.peak_flops([Device("NVIDIA A100-SXM4-40GB")])[0] == 312e12
  assert hardware.peak_flops([Device("TPU v5 lite")] * 4)[0] == 4 * 197e12
  assert hardware.peak_flops([Device("TPU v5")])[0] == 459e12
  peak, source = hardware.peak_flops([Device("Mystery chip")])
  assert peak is None and "no published peak" in source
  cpu = Device("cpu")
  cpu.platform = "cpu"
  peak, source = hardware.peak_flops([cpu] * 8)
  assert peak == hardware.matmul_peak_flops() > 1e9 and "shared by its 8 cpu device(s)" in source


def test_bench_rejects_an_unknown_shape(capsys):
  with pytest.raises(SystemExit) as exit_:
    bench.main(["--shapes", "c"])
  assert exit_.value.code == 2 and "error: unknown shape(s) c" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_:
    bench.main(["--config", f"{ROOT}/experiments/nope.py:size=tiny"])
  assert exit_.value.code == 2 and "error: experiment 'nope.py:size=tiny': no file" in capsys.readouterr().err


@pytest.mark.e2e
def test_bench_command_line():
  """The README's command, as a user runs it (on the tiny shape)."""
  import os
  import subprocess
  import sys

  env = dict(os.environ, XLA_FLAGS=xla_flags())
  proc = subprocess.run([sys.executable, "-m", "lmlab.bench", "--shapes", "tiny", "--steps", "2"],
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "family decoder, objective causal_lm, float32" in proc.stdout
  row = next(line for line in proc.stdout.splitlines() if line.startswith("tiny "))
  assert all(float(x.replace(",", "")) > 0 for x in row.split()[-3:])  # eval and decode tokens/s
