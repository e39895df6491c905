"""Data layer: documents (TFDS or text files), the sentencepiece tokenizer, packing and numpy batches.

The bundled TFDS builders, `bbc_news` and `disfl_qa` (question answering, built from a manual directory),
register when their modules are imported: sources.tfds_builder does that, so that TFDS is imported only
for a TFDS source. Code calling `tfds.builder("bbc_news")` itself imports lmlab.data.bbc_news first.
"""
