"""`launch.py plan` (the e2e tier): the train step compiled for an 8-device FSDP mesh without training,
its memory per device and cost, and one `error:` line when it does not fit the given memory."""

import pytest

from launching import ROOT, launch

pytestmark = pytest.mark.e2e


def test_plan_reports_memory_and_cost_and_refuses_what_does_not_fit(tmp_path, bbc_data_dir):
  args = ["plan", f"--config={ROOT}/experiments/gpt.py:size=tiny", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
  fits = launch(args + ["--device_memory_gb=1"], bbc_data_dir, devices=8).stdout
  assert "8 cpu device(s)" in fits and "mesh data 1 x fsdp 8 x tensor 1" in fits and ": fits" in fits
  lines = {line.split()[0]: line for line in fits.splitlines()[1:]}
  assert set(lines) == {"parameters", "optimizer", "batch", "XLA", "peak", "compute", "step"}
  assert "MFU of" in lines["step"] and "measured float32 matmul peak" in lines["step"]
  refused = launch(args + ["--device_memory_gb=0.000001"], bbc_data_dir, devices=8, check=False)
  assert refused.returncode and "DOES NOT FIT" in refused.stdout
  error = refused.stderr.strip().splitlines()[-1]
  assert error.startswith("error: the train step needs") and "config.mesh.fsdp" in error
  assert "Traceback" not in refused.stderr
