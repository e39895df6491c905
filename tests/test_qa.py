"""Question answering: the SQuAD metric against hand values, the overlap baseline, and the disfl_qa TFDS
builder on a tiny fixture (the real BIG-bench archive is never downloaded in tests)."""

import json
import tarfile

import pytest
import tensorflow_datasets as tfds

from lmlab.data import disfl_qa
from lmlab.tasks import qa


def test_squad_normalization_exact_match_and_f1_by_hand():
  assert qa.normalize_answer("The  Cat's hat!") == "cats hat"
  assert qa.exact_match("the cat", "Cat.") == 1.0 and qa.exact_match("a cat", "cats") == 0.0
  # pred {big, cat, sat} vs gold {cat, sat, down}: 2 common, precision = recall = 2/3.
  assert qa.token_f1("the big cat sat", "cat sat down") == pytest.approx(2 / 3)
  assert qa.token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # bags: 1 common of 2 predicted
  # SQuAD 2.0: no-answer is right only against no-answer.
  assert qa.token_f1("", "") == 1.0 and qa.token_f1("x", "") == 0.0 and qa.token_f1("", "x") == 0.0
  report = qa.qa_report(["Cat", "", "dog house"], [["the cat"], [""], ["house", "kennel"]])
  # EM 1, 1, 0; F1 1, 1 and "dog house" vs "house": p = 1/2, r = 1 -> 2/3.
  assert report["exact_match"] == pytest.approx(200 / 3) and report["f1"] == pytest.approx(100 * (8 / 3) / 3)
  assert report["has_answer_f1"] == pytest.approx(100 * (5 / 3) / 2) and report["no_answer_f1"] == 100.0
  assert report["count"] == 3 and report["answerable"] == 2
  with pytest.raises(ValueError):
    qa.qa_report(["a"], [])


def test_overlap_baseline_picks_the_sentence_sharing_most_words():
  context = "Paris is in France. The Seine runs through Paris! Cats sleep a lot."
  assert qa.overlap_baseline(context, "Which river runs through Paris?") == "The Seine runs through Paris!"
  assert qa.overlap_baseline("One sentence only", "nothing shared") == "One sentence only"


def test_detokenized_text_and_whitespace_blind_spans():
  raw = "the Earth ' s atmosphere ( see Occurrence ) . In 1990 , 40 , 000 plane - polarized rays"
  text = disfl_qa.detokenize(raw)
  assert text == "the Earth's atmosphere (see Occurrence). In 1990, 40,000 plane-polarized rays"
  for answer in ("40,000", "40 , 000", "Earth ' s atmosphere"):
    start, end = disfl_qa.find_span(text, answer)
    assert "".join(text[start:end].split()) == "".join(answer.split())
  assert disfl_qa.find_span(text, "absent") == (-1, -1)


TOPICS = {"river": "river water bank flow delta estuary", "moon": "moon orbit crater lunar tide apollo",
          "bread": "bread flour yeast oven dough bake"}


def fixture_examples():
  """3 topics x 4 paragraphs x 3 questions; the last question of each paragraph is unanswerable."""
  examples = []
  for topic, words in TOPICS.items():
    w = words.split()
    for p in range(4):
      context = f"The {w[0]} and the {w[1]} , {p} . A {w[2]} of {w[3]} ' s {w[4]} is 1 , 000 {w[5]} ."
      examples.append({"input": f"What is the {w[0]} ?  \ncontext: {context}", "target": f"{w[0]} and the {w[1]}"})
      examples.append({"input": f"How many {w[5]} no {w[4]} ?  \ncontext: {context}", "target": "1,000"})
      examples.append({"input": f"Who is {p} ?  \ncontext: {context}", "target": "unknown"})
  return examples


def test_article_clusters_recover_topics():
  contexts = [e["input"].split("\ncontext: ")[1] for e in fixture_examples()]
  clusters = disfl_qa.article_clusters(contexts, num_clusters=3)
  by_topic = {topic: {clusters[c] for c in contexts if words.split()[0] in c} for topic, words in TOPICS.items()}
  assert all(len(ids) == 1 for ids in by_topic.values()) and len(set.union(*by_topic.values())) == 3


def test_builder_reads_the_archive_or_task_json(tmp_path, monkeypatch):
  manual = tmp_path / "manual"
  manual.mkdir()
  (tmp_path / "task.json").write_text(json.dumps({"name": "disfl_qa", "examples": fixture_examples()}))
  with tarfile.open(manual / "bigbench-1.0.0.tar.gz", "w:gz") as tar:
    tar.add(tmp_path / "task.json", arcname=disfl_qa.ARCHIVE_MEMBER)
  assert disfl_qa.read_task(str(manual)) == disfl_qa.read_task(str(tmp_path)) == fixture_examples()
  with pytest.raises(FileNotFoundError, match="task.json or bigbench-1.0.0.tar.gz"):
    disfl_qa.read_task(str(tmp_path / "tfds"))
  monkeypatch.setattr(disfl_qa, "NUM_ARTICLES", 3)  # the fixture has 3 articles
  builder = tfds.builder("disfl_qa", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  splits = {name: list(tfds.as_numpy(builder.as_dataset(split=name))) for name in ("train", "validation", "test")}
  assert sum(map(len, splits.values())) == 36 and all(splits.values())
  articles = {name: {int(e["article"]) for e in rows} for name, rows in splits.items()}
  assert not (articles["train"] & articles["validation"] or articles["train"] & articles["test"]
              or articles["validation"] & articles["test"])  # no article in two splits
  for row in (e for rows in splits.values() for e in rows):
    context, answer = row["context"].decode(), row["answer"].decode()
    if row["answer_start"] < 0:
      assert answer == "" and row["question"].decode().startswith("Who is")
    else:
      assert context[row["answer_start"]:row["answer_start"] + len(answer)] == answer
      assert answer == "1,000" or answer.startswith(("river and", "moon and", "bread and"))
