"""The ablations' commands through launch.py (the e2e tier), each on its tiny grid: staged sweeps that
pretrain, select on validation and run the seeds (label efficiency, objectives), runs at matched compute
(families) and the scaling fit."""

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


def test_families_ablation_matches_compute_and_scores_the_deduplicated_validation(tmp_path, bbc_data_dir,
                                                                                   compilation_cache):
  """The README's families command on its tiny grid: Transformer and LSTM at one FLOP budget (2 seeds) and a
  3-gram, each neural run stopped at the step that spends the budget, every system scored on the whole
  validation split and on its articles that are not near-duplicates of training articles."""
  sweep_dir = str(tmp_path / "families")
  args = ["sweep", f"--config={ROOT}/experiments/families.py:size=tiny", f"--workdir={sweep_dir}", "--executor=debug"]
  out = launch(args, bbc_data_dir, cache_dir=compilation_cache).stdout
  assert "stage 1/1 'train': 5 points" in out
  runs = {}
  for name in os.listdir(sweep_dir):
    if os.path.exists(os.path.join(sweep_dir, name, "metrics.json")):
      summary = json.load(open(os.path.join(sweep_dir, name, "metrics.json")))
      cfg = json.load(open(os.path.join(sweep_dir, name, "config.json")))
      runs.setdefault(cfg["name"], []).append((summary, cfg))
  assert sorted((k, len(v)) for k, v in runs.items()) == [("fam_kn3", 1), ("fam_lstm", 2), ("fam_transformer", 2)]
  steps = {}
  for family in ("fam_lstm", "fam_transformer"):
    for summary, cfg in runs[family]:
      per_step = summary["flops_per_token"] * cfg["data"]["batch_size"] * cfg["data"]["seq_len"]
      assert abs(summary["step"] * per_step - 2e9) <= per_step / 2  # the budget, to the nearest step
      steps[family] = summary["step"]
  assert steps["fam_lstm"] != steps["fam_transformer"]  # cheaper tokens: more of them
  kept = {s["validation_dedup"]["documents"] for v in runs.values() for s, _ in v}
  assert len(kept) == 1 and kept.pop() > 0  # the same articles for every system
  with open(os.path.join(sweep_dir, "families.md")) as f:
    table = f.read()
  for system in ("kn3", "lstm", "transformer"):
    assert f"| {system} | " in table
  assert "| transformer - lstm | " in table and "(n=2;" in table and "| transformer - kn5 |" not in table
  assert os.path.exists(os.path.join(sweep_dir, "families.png"))
  assert os.path.exists(os.path.join(sweep_dir, "families_dedup.png"))



def test_scaling_ablation_fits_a_power_law_over_its_ladder(tmp_path, bbc_data_dir, compilation_cache):
  """The README's scaling command on its tiny grid: 4 decoder sizes on the same tokens, one seed, then the
  fit of L(N) over the non-embedding parameters (no interval with one seed) and the plot."""
  sweep_dir = str(tmp_path / "scaling")
  args = ["sweep", f"--config={ROOT}/experiments/scaling.py:size=tiny", f"--workdir={sweep_dir}", "--executor=debug"]
  out = launch(args, bbc_data_dir, cache_dir=compilation_cache).stdout
  assert "stage 1/1 'train': 4 points" in out
  with open(os.path.join(sweep_dir, "scaling.md")) as f:
    table = f.read()
  rows = [line for line in table.splitlines() if line[:3].strip("| ").isdigit()]
  assert [r.split("|")[1].strip() for r in rows] == ["16 x 1", "32 x 1", "48 x 1", "64 x 1"]
  counts = [int(r.split("|")[2].replace(",", "")) for r in rows]
  assert counts == sorted(counts) and counts[0] < counts[-1]
  # A fit, or the reason there is none: 4 tiny models at 2 steps need not fall with size.
  assert ("L(N) = " in table and "no interval (one seed per size)" in table) or "L(N) not fitted: " in table
  assert os.path.exists(os.path.join(sweep_dir, "scaling.png")) == ("L(N) = " in table)


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
