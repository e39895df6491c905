"""Question answering: the SQuAD metric against hand values, the baselines, the disfl_qa TFDS builder on a
tiny fixture (the real BIG-bench archive is never downloaded in tests), TFDS squad through the same task
(its mock data), context windows and answer selection. Training and predict run in test_qa_launch.py."""

import json

import numpy as np
import pytest
import sentencepiece
import tensorflow_datasets as tfds

from launching import QA_TOPICS, capture, experiment_config, qa_examples, write_bigbench_archive
from lmlab import config as config_lib
from lmlab.data import disfl_qa, tokenizer
from lmlab.data.tokenizer import BOS_ID, CLS_ID, EOS_ID, SEP_ID
from lmlab.errors import ConfigError, DataError
from lmlab.tasks import config as task_config
from lmlab.tasks import data, evaluators, finetune, predict, qa, qa_inputs
from lmlab.train import partitioning


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


def test_article_clusters_recover_topics():
  contexts = [e["input"].split("\ncontext: ")[1] for e in qa_examples()]
  clusters = disfl_qa.article_clusters(contexts, num_clusters=3)
  by_topic = {topic: {clusters[c] for c in contexts if words.split()[0] in c} for topic, words in QA_TOPICS.items()}
  assert all(len(ids) == 1 for ids in by_topic.values()) and len(set.union(*by_topic.values())) == 3


def test_builder_reads_the_archive_or_task_json(tmp_path, qa_data_dir):
  archive_dir = tmp_path / "archive"
  write_bigbench_archive(archive_dir)
  (tmp_path / "task.json").write_text(json.dumps({"name": "disfl_qa", "examples": qa_examples()}))
  assert disfl_qa.read_task(str(archive_dir)) == disfl_qa.read_task(str(tmp_path)) == qa_examples()
  with pytest.raises(FileNotFoundError, match="task.json or bigbench-1.0.0.tar.gz"):
    disfl_qa.read_task(str(tmp_path / "tfds"))
  builder = tfds.builder("disfl_qa", data_dir=qa_data_dir)  # prepared from the archive by the fixture
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


@pytest.fixture(scope="module")
def sp():
  """A small BPE tokenizer trained on the fixture's texts (and some non-ASCII text)."""
  texts = [e["input"] for e in qa_examples()] + ["Émile  paid £5,000 in Zürich. The river flows."] * 3
  tok_cfg = config_lib.default_config().tokenizer
  tok_cfg.vocab_size, tok_cfg.model_type, tok_cfg.num_sentinels = 150, "bpe", 0
  return sentencepiece.SentencePieceProcessor(model_proto=tokenizer.train_model(texts, tok_cfg, fit_vocab=True))


def qa_split(examples) -> data.Split:
  parsed = [disfl_qa.parse(e) for e in examples]
  return data.Split(texts=[p["question"] for p in parsed], labels=None, targets=[p["answer"] for p in parsed],
                    contexts=[p["context"] for p in parsed], answers=[[p["answer"]] for p in parsed],
                    answer_starts=[p["answer_start"] for p in parsed])


def test_context_tokens_map_back_to_characters(sp):
  context = "Émile  paid £5,000 in Zürich. The river flows."
  ids, spans = qa_inputs.context_tokens(sp, context)
  assert ids == sp.encode(context) and spans.shape == (len(ids), 2)
  # sentencepiece counts bytes; the spans count characters, without the pieces' leading spaces.
  assert "".join(context[b:e] for b, e in spans) == "".join(context.split())
  first, last = qa_inputs.answer_tokens(spans, context.index("Zürich"), "Zürich")
  covered = context[spans[first][0]:spans[last][1]]
  assert covered.startswith("Zürich") and len(covered) <= len("Zürich.")
  assert qa_inputs.answer_tokens(spans, -1, "") is None


def test_span_windows_hold_each_answer_whole_or_point_at_cls(sp):
  split = qa_split(qa_examples()[:6])
  w = qa_inputs.make_windows(sp, split, "span", "encoder", seq_len=24, max_question_len=8, doc_stride=5,
                             max_target_len=4)
  a = w.arrays
  assert len(w.example) > len(split)  # the contexts are longer than a window
  for i in range(len(split)):
    rows = np.flatnonzero(w.example == i)
    assert list(w.first[rows]) == list(range(0, 5 * len(rows), 5))
    assert w.first[rows[-1]] + w.length[rows[-1]] == len(w.spans[i])  # the last window reaches the end
    hits = [r for r in rows if a["targets"][r, 0] > 0]
    assert bool(hits) == bool(split.targets[i]) and len(hits) < len(rows)
    for r in hits:
      s, e = a["targets"][r]
      assert s <= e and a["candidates"][r, s] and a["candidates"][r, e]
      begin, end = w.spans[i][w.first[r] + s - w.column[r]][0], w.spans[i][w.first[r] + e - w.column[r]][1]
      assert split.contexts[i][begin:end] == split.targets[i]
  col, n = w.column[0], w.length[0]  # [CLS] question [SEP] window [SEP]
  assert a["tokens"][0, 0] == CLS_ID and a["tokens"][0, col - 1] == SEP_ID and a["tokens"][0, col + n] == SEP_ID
  assert not a["token_types"][0, :col].any() and a["token_types"][0, col:col + n + 1].all()
  assert a["candidates"][0].sum() == n + 1 and a["candidates"][0, 0]
  assert (a["weights"] == 1).all()


@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_generation_windows_answer_only_where_they_hold_it(sp, family):
  split = qa_split(qa_examples()[:3])
  w = qa_inputs.make_windows(sp, split, "generation", family, seq_len=40, max_question_len=8, doc_stride=6,
                             max_target_len=6)
  holding = set()
  for r, prompt in enumerate(w.prompts):
    i = w.example[r]
    window = qa_inputs.context_tokens(sp, split.contexts[i])[0][w.first[r]:w.first[r] + w.length[r]]
    question = sp.encode(split.texts[i])[:8]
    expected = ([BOS_ID] + question + [SEP_ID] + window + [SEP_ID] if family == "decoder"
                else question + [SEP_ID] + window + [EOS_ID])
    assert prompt == expected
    gold = qa_inputs.answer_tokens(w.spans[i], split.answer_starts[i], split.targets[i])
    holds = gold is not None and w.first[r] <= gold[0] and gold[1] < w.first[r] + w.length[r]
    output = (sp.encode(split.targets[i])[:6] if holds else []) + [EOS_ID]
    if family == "decoder":
      assert list(w.arrays["tokens"][r, len(prompt):len(prompt) + len(output)]) == output
    else:
      assert list(w.arrays["targets"][r, :len(output)]) == output
    assert w.arrays["weights"][r].sum() == len(output)
    holding.add(i) if holds else None
  assert holding == {i for i, t in enumerate(split.targets) if t}


def test_span_answers_follow_the_logits_and_the_no_answer_rule(sp):
  split = qa_split(qa_examples()[:6])
  w = qa_inputs.make_windows(sp, split, "span", "encoder", seq_len=24, max_question_len=8, doc_stride=5,
                             max_target_len=4)
  logits_W2L = np.zeros((len(w.example), 2, 24))
  for r, (s, e) in enumerate(w.arrays["targets"]):  # each window votes for its target span, or [CLS]
    logits_W2L[r, 0, s] = logits_W2L[r, 1, e] = 10.0
  texts, margins = qa_inputs.span_candidates(w, split.contexts, logits_W2L, max_answer_len=30)
  answers = qa_inputs.choose(texts, margins)
  assert answers == split.targets and "" in answers
  assert all(m == 20.0 for m, t in zip(margins, split.targets) if t)  # span 10 + 10 over [CLS] 0 + 0
  assert qa_inputs.choose(texts, margins, threshold=20.5) == [""] * len(split)
  # A span longer than max_answer_len tokens is never chosen.
  start_L, end_L = np.zeros(12), np.zeros(12)
  start_L[3], end_L[9], end_L[4] = 5.0, 5.0, 1.0
  assert qa_inputs.best_span(start_L, end_L, 2, 11, max_answer_len=30) == (10.0, 3, 9)
  assert qa_inputs.best_span(start_L, end_L, 2, 11, max_answer_len=3) == (6.0, 3, 4)
  texts, margins = qa_inputs.candidates({0: (1.0, "x"), 1: (1.0, "y")}, {0: 2.0, 1: 0.5}, 3)
  assert texts == ["x", "y", ""] and list(margins) == [-1.0, 0.5, -np.inf]
  assert qa_inputs.choose(texts, margins) == ["", "y", ""]


def test_best_threshold_maximizes_f1_like_the_squad2_script():
  golds = [["cat"], ["dog"], [""], [""]]
  # Margins: right answers at 2.0 and -1.0, wrong ones (questions without answer) at 0.5 and -3.0.
  candidates, margins = ["cat", "dog", "bird", "fish"], np.array([2.0, -1.0, 0.5, -3.0])
  # Threshold -1.0 answers cat, dog, bird: F1 3/4 (bird wrong); 0.5: cat, bird: 2/4; 2.0: cat only: 3/4;
  # the tie goes to the higher threshold (fewer answers).
  assert qa.best_threshold(candidates, margins, golds) == 2.0
  margins[0] = -2.0  # now -2.0 (cat, dog, bird) is the only best: 3/4 against at most 2/4
  assert qa.best_threshold(candidates, margins, golds) == -2.0
  assert qa.best_threshold(["bird"], np.array([1.0]), [[""]]) == 2.0  # never answer: largest margin + 1
  assert qa.best_threshold([""], np.array([-np.inf]), [["x"]]) == 0.0  # no candidates


def test_qa_tasks_read_disfl_qa_and_squad_format(qa_data_dir, tmp_path):
  cfg = experiment_config("finetune.py:size=tiny,task=disfl_qa", **{"data.tfds_data_dir": qa_data_dir})
  task = data.load_task(cfg)
  assert task.kind == "qa" and len(task.train) + len(task.validation) + len(task.test) == 36
  for split in (task.train, task.validation, task.test):
    for context, target, start, golds in zip(split.contexts, split.targets, split.answer_starts, split.answers):
      assert golds == [target] and (start == -1 if not target else context[start:start + len(target)] == target)
  # TFDS's squad (offline: its mock data) through the same task: validation carved from train by article.
  cfg = experiment_config("finetune.py:size=tiny,task=squad", **{
      "data.tfds_data_dir": str(tmp_path), "data.tfds_download": True, "task.validation_percent": 50})
  with tfds.testing.mock_data(num_examples=20):
    task = data.load_task(cfg)
  assert len(task.test) == 20 and len(task.train) + len(task.validation) == 20 and len(task.validation)
  assert all(golds and all(golds) for golds in task.test.answers)  # squad/v2.0's mock answers are all given


def test_qa_baselines_run_in_the_harness_and_predict(qa_data_dir, tmp_path):
  cfg = experiment_config("finetune.py:size=tiny,task=disfl_qa,baseline=true",
                          **{"data.tfds_data_dir": qa_data_dir, "workdir": str(tmp_path / "overlap")})
  summary, _ = capture(finetune.run, cfg)
  task = data.load_task(cfg)
  expected = qa.qa_report([qa.overlap_baseline(c, q) for c, q in zip(task.test.contexts, task.test.texts)],
                          task.test.answers)
  assert summary["system"] == "overlap" and summary["test"] == expected and summary["metric"] == "f1"
  context = "The river is wide. Bread needs yeast and flour."
  assert predict.predict_workdir(str(tmp_path / "overlap"), ["What does bread need?"], context) == [
      {"answer": "Bread needs yeast and flour."}]
  with pytest.raises(ConfigError, match="--context"):
    predict.predict_workdir(str(tmp_path / "overlap"), ["What does bread need?"])
  cfg = experiment_config("finetune.py:size=tiny,task=disfl_qa", **{
      "data.tfds_data_dir": qa_data_dir, "workdir": str(tmp_path / "none"), "finetune.baseline": "no_answer"})
  summary, _ = capture(finetune.run, cfg)
  test = summary["test"]  # right exactly on the unanswerable questions
  assert test["no_answer_exact_match"] == 100 and test["has_answer_f1"] == 0
  assert test["exact_match"] == pytest.approx(100 * (1 - test["answerable"] / test["count"]))


def test_qa_config_errors():
  cfg = experiment_config("finetune.py:size=tiny,task=disfl_qa,family=gpt", **{"task.max_question_len": 50})
  with pytest.raises(ConfigError, match="context tokens per window"):
    task_config.validate(cfg, 1)
  cfg = experiment_config("finetune.py:size=tiny,task=topic", **{"finetune.baseline": "overlap"})
  with pytest.raises(ConfigError, match="is a qa baseline"):
    task_config.validate(cfg, 1)
  cfg = experiment_config("finetune.py:size=tiny,task=disfl_qa", **{"task.qa_tfds_name": "squad/v1.1"})
  with pytest.raises(ConfigError, match="use task.name = 'squad'"):
    task_config.validate(cfg, 1)


def test_disfl_qa_is_prepared_from_the_manual_dir_or_one_error(tmp_path, monkeypatch):
  """The README's path: --config.data.tfds_manual_dir holding the bigbench archive."""
  monkeypatch.setattr(disfl_qa, "NUM_ARTICLES", 3)
  cfg = experiment_config("finetune.py:size=tiny,task=disfl_qa", **{"data.tfds_data_dir": str(tmp_path / "tfds")})
  with pytest.raises(DataError, match="bigbench-1.0.0.tar.gz .from PyPI. in a directory"):
    data.load_task(cfg)  # not prepared, no manual directory: an error, not a download attempt
  cfg.data.tfds_manual_dir = str(tmp_path / "empty")
  with pytest.raises(DataError, match="cannot be prepared from config.data.tfds_manual_dir"):
    data.load_task(cfg)
  write_bigbench_archive(tmp_path / "bigbench")
  cfg.data.tfds_manual_dir = str(tmp_path / "bigbench")
  task = data.load_task(cfg)
  assert len(task.train) + len(task.validation) + len(task.test) == 36


def test_generated_answers_are_scored_and_chosen_across_windows(sp, monkeypatch):
  """The generation path of QaEvaluator.answers with a stand-in model: answers that never produced EOS are
  cut to max_target_len, each window's answer is scored against the no-answer score, and the best wins."""
  cfg = experiment_config("finetune.py:size=tiny,task=disfl_qa,family=gpt", **{"data.seq_len": 40})
  split = qa_split(qa_examples()[:3])
  long_answer = sp.encode("river river river river river river river river river river")
  asked = []

  def decode(cfg, model, params, prompts, min_new_tokens=0):
    asked.append(min_new_tokens)
    return [long_answer for _ in prompts]

  monkeypatch.setattr(evaluators, "decode", decode)

  class Model:  # log p(output) = -(its length); no-answer = -1 except in the first question's windows
    mesh = partitioning.data_parallel_mesh()
    model = None

    def target_log_probs(self, params, batch):
      weights = np.asarray(batch["weights"])
      no_answer = weights.sum(1) == 1
      return np.where(no_answer, np.where(np.asarray(batch["tokens"])[:, 1] == sp.encode("What")[0], -50, -1),
                      -weights.sum(1))

  evaluator = evaluators.QaEvaluator(cfg, Model(), sp)
  answers = evaluator.answers(None, split)
  cut = sp.decode(long_answer[:cfg.task.max_target_len])
  assert answers == [cut, "", ""] and len(long_answer) > cfg.task.max_target_len
  assert asked == [1]  # candidates are non-empty answers: no EOS at the first step
