"""Running lmlab end to end, for the run tests (a helper module, not a test file): launch.py in a
subprocess (the e2e tier), or an experiment file's config for the in-process functions launch.py calls."""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [f"--config={ROOT}/experiments/gpt.py:size=tiny", "--config.train.log_every=1"]


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS of the e2e tier's subprocesses: `devices` CPU devices, compiled without LLVM's
  optimizations (tiny programs: -O0 compiles faster than the steps it slows down; like the in-process tier)."""
  return f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"


def launch(args, data_dir, devices=1, check=True, cache_dir=None, python_flags=()):
  """launch.py with `args` in a subprocess; cache_dir: JAX's persistent compilation cache, so the
  subprocesses of one test session compile each shared step once."""
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, XLA_FLAGS=xla_flags(devices))
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc = subprocess.run([sys.executable, *python_flags, os.path.join(ROOT, "launch.py"), *args], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  if check and proc.returncode:
    raise AssertionError(f"launch.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
  return proc


def experiment_config(spec: str, **overrides):
  """get_config(arg) of experiments/<file>[:arg] ("gpt.py:size=tiny"), with dotted-key overrides."""
  from lmlab import config as config_lib

  name, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("experiment", os.path.join(ROOT, "experiments", name))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  cfg = module.get_config(arg or None)
  for key, value in overrides.items():
    config_lib.set_by_path(cfg, key, value)
  return cfg


def capture(fn, *args):
  """(fn(*args), what it printed)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = fn(*args)
  return result, out.getvalue()


GPT_VARIANT = """
import importlib.util
from lmlab.sweeps import grid
spec = importlib.util.spec_from_file_location("gpt", {gpt!r})
gpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpt)

def get_config(arg=None):
  c = gpt.get_config(arg)
  c.train.num_steps, c.train.checkpoint_every, c.train.eval_every, c.train.log_every = {num_steps}, 50, 0, 1
  return c

def get_sweep():
  return grid.sweep("optim.lr", {lrs!r})
"""


def gpt_variant(path, num_steps: int, lrs: list) -> str:
  """An experiment file at `path`: experiments/gpt.py with num_steps steps (a checkpoint every 50, no
  periodic evaluation, every step logged) and a sweep over the learning rates `lrs`."""
  with open(path, "w") as f:
    f.write(GPT_VARIANT.format(gpt=os.path.join(ROOT, "experiments", "gpt.py"), num_steps=num_steps, lrs=lrs))
  return str(path)


def train_losses(workdir):
  """{step: train loss} from a run's metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def start(args, data_dir, cache_dir=None):
  """launch.py with `args` started in the background (a Popen with piped output), on one device."""
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, XLA_FLAGS=xla_flags())
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *args], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def slurm_cluster_up() -> bool:
  """Whether a Slurm cluster answers here; in CI (CI=true) its absence fails the test that asks."""
  import shutil
  up = bool(shutil.which("sinfo")) and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
  if not up and os.environ.get("CI"):
    raise AssertionError("no Slurm cluster: .ci/run starts one with .ci/slurm.sh start")
  return up


QA_TOPICS = {"river": "river water bank flow delta estuary", "moon": "moon orbit crater lunar tide apollo",
             "bread": "bread flour yeast oven dough bake"}


def qa_examples():
  """A BIG-bench disfl_qa task.json's examples: 3 topics (articles) x 4 paragraphs x 3 questions, in its
  tokenized text; the last question of each paragraph is unanswerable ("unknown")."""
  examples = []
  for topic, words in QA_TOPICS.items():
    w = words.split()
    for p in range(4):
      context = f"The {w[0]} and the {w[1]} , {p} . A {w[2]} of {w[3]} ' s {w[4]} is 1 , 000 {w[5]} ."
      examples.append({"input": f"What is the {w[0]} ?  \ncontext: {context}", "target": f"{w[0]} and the {w[1]}"})
      examples.append({"input": f"How many {w[5]} no {w[4]} ?  \ncontext: {context}", "target": "1,000"})
      examples.append({"input": f"Who is {p} ?  \ncontext: {context}", "target": "unknown"})
  return examples


def write_bigbench_archive(directory) -> str:
  """bigbench-1.0.0.tar.gz holding only disfl_qa/task.json with qa_examples(), in `directory`."""
  import tarfile

  from lmlab.data import disfl_qa
  os.makedirs(directory, exist_ok=True)
  task = os.path.join(directory, "task.json.tmp")
  with open(task, "w") as f:
    json.dump({"name": "disfl_qa", "examples": qa_examples()}, f)
  archive = os.path.join(directory, "bigbench-1.0.0.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(task, arcname=disfl_qa.ARCHIVE_MEMBER)
  os.remove(task)
  return archive
