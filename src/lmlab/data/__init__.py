"""Data layer: documents (TFDS or text files), the sentencepiece tokenizer, packing and numpy batches.

Importing this package registers the bundled `bbc_news` TFDS builder, so `tfds.load("bbc_news")` works,
and `disfl_qa` (question answering, built from a manual directory).
"""

from lmlab.data import bbc_news, disfl_qa  # noqa: F401  (register the TFDS builders)
