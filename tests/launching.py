"""Running launch.py in a subprocess, for the end-to-end tests (a helper module, not a test file)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [f"--config={ROOT}/experiments/gpt.py:size=tiny", "--config.train.log_every=1"]


def launch(args, data_dir, devices=1, check=True):
  env = dict(os.environ, TFDS_DATA_DIR=data_dir,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  if check and proc.returncode:
    raise AssertionError(f"launch.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
  return proc
