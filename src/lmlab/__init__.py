"""lmlab: a JAX/Flax research codebase for pretraining language models."""

from lmlab import data  # registers the bbc_news TFDS builder
