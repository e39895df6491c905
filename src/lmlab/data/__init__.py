"""Data layer: documents (TFDS or text files), the sentencepiece tokenizer, packing and tf.data batches.

Importing this package registers the bundled `bbc_news` TFDS builder, so `tfds.load("bbc_news")` works.
"""

from lmlab.data import bbc_news  # noqa: F401  (registers the TFDS builder)
