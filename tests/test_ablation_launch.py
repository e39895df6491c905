"""The fine-tuning ablations' commands through launch.py (the e2e tier), each on its tiny grid: staged
sweeps that pretrain, select on validation and run the seeds (label efficiency, objectives at matched
pretraining FLOPs). The families and scaling commands: test_compute_launch.py."""

import json
import os

import pytest

from launching import ROOT, launch

pytestmark = pytest.mark.e2e


def test_label_efficiency_ablation_runs_its_stages_in_one_command(tmp_path, bbc_data_dir, compilation_cache):
  """The README's label-efficiency command on its tiny grid (GPT and BERT): pretraining, the per-system selection at seed
  0, then the seeds with the chosen settings and TF-IDF + SVM, and the report's tables (a rerun of a
  staged sweep: tests/test_sweeps.py)."""
  sweep_dir = str(tmp_path / "le")
  args = ["sweep", f"--config={ROOT}/experiments/label_efficiency.py:size=tiny", f"--workdir={sweep_dir}",
          "--executor=debug"]
  out = launch(args, bbc_data_dir, cache_dir=compilation_cache).stdout
  assert "stage 1/3 'pretrain': 2 points" in out and "stage 2/3 'select': 4 points" in out
  # 4 systems x 2 seeds + 2 SVM runs; seed 0 of each system is its selection run, done already.
  assert "stage 3/3 'seeds': 10 points" in out and out.count(": done, skipped") == 4
  names = os.listdir(sweep_dir)
  assert sum(n.startswith("experiment=") and "init_from" not in n and "finetune" not in n for n in names) == 2
  pretrained = [json.load(open(os.path.join(sweep_dir, n, "config.json"))) for n in names
                if os.path.exists(os.path.join(sweep_dir, n, "config.json"))
                and "init_from" in json.load(open(os.path.join(sweep_dir, n, "config.json")))]
  assert {c["init_from"] is not None for c in pretrained} == {True, False}  # pretrained and scratch systems
  with open(os.path.join(sweep_dir, "label_efficiency.md")) as f:
    table = f.read()
  for system in ("gpt_pretrained", "gpt_scratch", "bert_pretrained", "bert_scratch", "tfidf_svm"):
    assert f"| {system} | " in table and "(n=2)" in table
  assert "| a=gpt_pretrained - b=gpt_scratch |" in table and "[" in table
  assert os.path.exists(os.path.join(sweep_dir, "label_efficiency.png"))


def test_objectives_ablation_pretrains_at_matched_flops_then_fine_tunes(tmp_path, bbc_data_dir, compilation_cache):
  """The README's objectives command on its tiny grid: a causal-LM decoder and a span-corruption
  encoder-decoder pretrained for the same FLOPs, fine-tuned at label fraction 0.1 (selection at seed 0,
  then seed 1), and the table of accuracies with the paired difference and its plot."""
  sweep_dir = str(tmp_path / "objectives")
  args = ["sweep", f"--config={ROOT}/experiments/objectives.py:size=tiny", f"--workdir={sweep_dir}",
          "--executor=debug"]
  out = launch(args, bbc_data_dir, cache_dir=compilation_cache).stdout
  assert "stage 1/3 'pretrain': 2 points" in out and "stage 2/3 'select': 2 points" in out
  assert "stage 3/3 'seeds': 2 points" in out
  pretrained = {}
  for name in os.listdir(sweep_dir):
    path = os.path.join(sweep_dir, name, "metrics.json")
    cfg_path = os.path.join(sweep_dir, name, "config.json")
    if os.path.exists(path) and json.load(open(cfg_path))["name"].startswith("objpre_"):
      summary, cfg = json.load(open(path)), json.load(open(cfg_path))
      per_step = summary["flops_per_token"] * cfg["data"]["batch_size"] * cfg["data"]["seq_len"]
      assert abs(summary["step"] * per_step - 4e9) <= per_step / 2  # the budget, to the nearest step
      pretrained[cfg["objective"]["name"]] = summary["step"]
  assert sorted(pretrained) == ["causal_lm", "span_corruption"]
  assert pretrained["causal_lm"] != pretrained["span_corruption"]
  with open(os.path.join(sweep_dir, "objectives.md")) as f:
    table = f.read()
  for system in ("decoder_causal_lm", "encdec_span_corruption"):
    assert f"| {system} | " in table
  assert table.count("(n=2)") == 2 and "| encdec_span_corruption - decoder_causal_lm | " in table
  assert os.path.exists(os.path.join(sweep_dir, "objectives.png"))
