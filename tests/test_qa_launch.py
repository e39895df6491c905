"""Question answering through the command line (the e2e tier): a span-extracting encoder (from scratch)
and a generating decoder (from the e2e tier's pretrained tiny GPT) fine-tune on the disfl_qa fixture
(conftest.qa_data_dir), write their test predictions, and answer questions about a context given to
`launch.py predict`."""

import json
import os

import pytest

from launching import ROOT, launch

pytestmark = pytest.mark.e2e

CONTEXT = "The river and the water, 7. A bank of flow's delta is 1,000 estuary."
QUESTIONS = ["What is the river?", "How many estuary?"]


@pytest.mark.parametrize("family, head", [("bert", "span head"), ("gpt", "decoder (")])
def test_qa_finetune_and_predict_with_a_context(family, head, tmp_path, qa_data_dir, compilation_cache, request):
  workdir = str(tmp_path / family)
  init = [f"--config.init_from={request.getfixturevalue('tiny_run')[0]}"] if family == "gpt" else []
  stdout = launch([f"--config={ROOT}/experiments/finetune.py:size=tiny,task=disfl_qa,family={family}",
                   f"--workdir={workdir}", *init], qa_data_dir, cache_dir=compilation_cache).stdout
  assert "Task disfl_qa (qa): 12 train examples" in stdout and head in stdout and "context windows" in stdout
  assert ("pretrained tensors from" in stdout) == bool(init)
  with open(os.path.join(workdir, "metrics.json")) as f:
    summary = json.load(f)
  assert summary["metric"] == "f1" and summary["test"]["count"] == 12
  assert 0 <= summary["test"]["exact_match"] <= summary["test"]["f1"] <= 100
  with open(os.path.join(workdir, "test_predictions.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 12 and all(set(row) == {"question", "prediction", "answers"} for row in rows)

  args = ["predict", f"--workdir={workdir}", f"--context={CONTEXT}"] + [f"--text={q}" for q in QUESTIONS]
  out = launch(args, qa_data_dir, cache_dir=compilation_cache).stdout.strip().splitlines()
  assert [line.split(" -> ")[0] for line in out] == QUESTIONS
  for line in out:  # an extracted answer is a piece of the context
    answer = line.split(" -> ", 1)[1]
    assert answer == "(no answer in the context)" or family == "gpt" or answer in CONTEXT
  missing = launch(["predict", f"--workdir={workdir}", f"--text={QUESTIONS[0]}"], qa_data_dir, check=False)
  assert missing.returncode and missing.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "--context" in missing.stderr and "Traceback" not in missing.stderr
