"""The ablation experiments' grids and reports, in-process: matched compute (families.py), the scaling
ladder and its fit (scaling.py) on synthetic runs. Their commands run end to end in test_ablation_launch.py."""

import importlib.util
import json
import os

import numpy as np

from launching import ROOT
from lmlab import models
from lmlab.sweeps import stages


def experiment(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_families_spend_each_budget_and_run_the_seeds_at_one():
  families = experiment("families")
  [stage] = families.get_sweep()
  load = stages.experiment_loader(os.path.join(ROOT, "experiments"))
  neural = [p for p in stage.points if "ngram" not in p["experiment"]]
  assert sorted(p["name"] for p in stage.points if "ngram" in p["experiment"]) == ["fam_kn3", "fam_kn4", "fam_kn5"]
  assert len(neural) == 3 * (len(families.BUDGETS) - 1 + families.SEEDS)
  for p in neural:
    cfg = load(p["experiment"])
    per_step = models.config_flops_per_token(cfg, cfg.tokenizer.vocab_size) * cfg.data.batch_size * cfg.data.seq_len
    spent = p["train.num_steps"] * per_step
    assert min(abs(spent - b) for b in families.BUDGETS) <= per_step / 2
  assert all(p["data.eval_dedup"] == families.DEDUP for p in stage.points)


def test_scaling_ladder_spans_30x_in_non_embedding_parameters():
  scaling = experiment("scaling")
  [stage] = scaling.get_sweep()
  load = stages.experiment_loader(os.path.join(ROOT, "experiments"))
  counts = set()
  for p in stage.points:
    cfg = load(p["experiment"])
    for key, value in p.items():
      if key.startswith("model."):
        cfg.model[key[len("model."):]] = value
    n = scaling.non_embedding_parameters(cfg)
    assert n == sum(12 * d * d + 13 * d for d in [cfg.model.d_model] * cfg.model.num_layers) + 2 * cfg.model.d_model
    counts.add(n)
    tokens = p["train.num_steps"] * cfg.data.batch_size * cfg.data.seq_len
    assert tokens in [round(t / 4096) * 4096 for t in scaling.TOKENS]
  assert len(counts) == 5 and max(counts) / min(counts) >= 30
  assert len(stage.points) == 5 * len(scaling.TOKENS) * scaling.SEEDS


def test_scaling_report_recovers_a_power_law_from_its_runs(tmp_path):
  """Synthetic finished runs with L = 40·N^-0.3 + 3 (plus seed noise) at one budget: the report's fit
  finds alpha, with a bootstrap interval around it, and the plot is written."""
  scaling = experiment("scaling")
  base = scaling.get_config().to_dict()
  rng = np.random.default_rng(0)
  for d_model, layers in scaling.LADDER:
    cfg = json.loads(json.dumps(base))
    cfg["model"].update(d_model=d_model, num_layers=layers, num_heads=d_model // 16, mlp_dim=4 * d_model)
    cfg["name"] = "scaling_491520"
    n = scaling.non_embedding_parameters(cfg)
    for seed in range(3):
      run = tmp_path / f"d{d_model}_s{seed}"
      run.mkdir()
      cfg["seed"] = seed
      loss = 40 * n ** -0.3 + 3 + rng.normal(0, 0.01)
      (run / "config.json").write_text(json.dumps(cfg))
      (run / "metrics.json").write_text(json.dumps({"step": 120, "validation": {"loss": loss}}))
  lines = scaling.report(str(tmp_path))
  [fit] = [line for line in lines if line.startswith("L(N) = ")]
  alpha = float(fit.split("N^-")[1].split(" ")[0])
  low, high = (float(v) for v in fit.split("[")[1].split("]")[0].split(", "))
  assert abs(alpha - 0.3) < 0.05 and low < alpha < high and high - low < 0.2, fit
  assert "Training tokens 491,520:" in lines and os.path.exists(tmp_path / "scaling.png")


def test_objectives_pretrain_every_system_for_the_same_flops():
  objectives = experiment("objectives")
  pretrain, select, seeds = objectives.get_sweep()
  load = stages.experiment_loader(os.path.join(ROOT, "experiments"))
  points = pretrain.points([])
  assert [p["name"] for p in points] == [f"objpre_{s}" for s in objectives.SYSTEMS]
  steps = {}
  for p in points:
    cfg = load(p["experiment"])
    per_step = models.config_flops_per_token(cfg, cfg.tokenizer.vocab_size) * cfg.data.batch_size * cfg.data.seq_len
    assert abs(p["train.num_steps"] * per_step - objectives.BUDGET) <= per_step / 2
    steps[cfg.objective.name] = p["train.num_steps"]
  assert steps["span_corruption"] != steps["causal_lm"] == steps["prefix_lm"]  # same model, same steps
  done = [stages.Result("pretrain", p, f"/runs/{p['name']}", {}) for p in points]
  chosen = select.points(done)
  assert len(chosen) == sum(len(objectives.LRS) * len(poolings) for _, poolings in objectives.SYSTEMS.values())
  assert {p["init_from"] for p in chosen} == {f"/runs/{p['name']}" for p in points}
