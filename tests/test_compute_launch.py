"""The pretraining ablations' commands through launch.py (the e2e tier), each on its tiny grid: model
families at matched training FLOPs with the de-duplicated validation, and the scaling ladder's fit."""

import json
import os

import pytest

from launching import ROOT, launch

pytestmark = pytest.mark.e2e


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
