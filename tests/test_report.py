"""Tests of lmlab.report on hand-made run directories (config.json, metrics.json, metrics.jsonl,
provenance.json as the training code writes them; no training): intervals against hand-computed values,
axis detection, a fine-tuning label-fraction sweep, a known power law, code versions and the CLI."""

import json
import math

import numpy as np
import pytest

from lmlab import report as report_lib
from lmlab.report import stats

T_975_2DOF = 4.302653  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def write_run(root, name, config, metrics=None, log=(), provenance=None):
  run = root / name
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps(config))
  if metrics is not None:
    (run / "metrics.json").write_text(json.dumps(metrics))
  if log:
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))
  if provenance is not None:
    (run / "provenance.json").write_text(json.dumps({"runs": provenance}))
  return run


def pretrain_config(seed, lr=1e-3, d_model=64, log_every=10):
  return {"seed": seed, "workdir": f"/somewhere/run{seed}-{lr}", "name": f"gpt_{seed}",
          "model": {"family": "decoder", "d_model": d_model, "positions": "rotary"},
          "optim": {"lr": lr}, "data": {"batch_size": 8, "seq_len": 16},
          "train": {"num_steps": 100, "log_every": log_every, "checkpoint_every": 50 + seed},
          "sample": {"prompts": ["The", f"seed {seed}"]}}


def pretrain_metrics(loss, parameters=1000, step=100):
  return {"step": step, "validation": {"loss": loss, "perplexity": math.exp(loss), "accuracy": 0.5},
          "parameters": parameters, "flops_per_token": 6000.0, "wall_time_s": 1.0}


def entry(commit="ab" * 20, dirty=False, jax="0.4.30"):
  return {"started": "2025-01-01T00:00:00+00:00", "ended": None, "outcome": "finished", "argv": ["launch.py"],
          "host": "h", "pid": 1, "git": {"commit": commit, "dirty": dirty, "diff_file": None},
          "versions": {"jax": jax, "jaxlib": jax, "flax": "0.8.5", "optax": "0.2.3", "orbax-checkpoint": "0.6.4",
                       "tensorflow": "2.17.0", "tensorflow-datasets": "4.9.6"},
          "devices": {"kind": "cpu", "count": 8, "processes": 1}}


def test_table_matches_hand_computed_intervals(tmp_path, capsys):
  """lr 1e-3: losses 1, 2, 4 over seeds 0-2 (seeds, work directories, names, log_every and sample prompts
  all differ, and must not split it); lr 3e-3: one seed; one run never finished."""
  root = tmp_path / "sweep"
  # A resumed run logs steps 60-80 twice: the report keeps the last rows.
  log = [{"step": s, "split": "eval", "loss": 9.0} for s in (20, 40, 60, 80)]
  log += [{"step": s, "split": "eval", "loss": 5.0 - s / 100} for s in (60, 80, 100)]
  for seed, loss in enumerate([1.0, 2.0, 4.0]):
    write_run(root, f"lr1-{seed}", pretrain_config(seed, log_every=10 * (seed + 1)), pretrain_metrics(loss), log,
              [entry()])
  write_run(root, "lr3-0", pretrain_config(0, lr=3e-3), pretrain_metrics(3.0), log, [entry()])
  write_run(root, "lr3-1", pretrain_config(1, lr=3e-3))  # still running: no metrics.json
  write_run(root / "submitit", "job", pretrain_config(7, lr=1.0), pretrain_metrics(0.1))  # not a run

  result = report_lib.report(str(root))
  assert result["axes"] == ["optim.lr"]
  assert result["metrics"] == ["validation.loss", "validation.perplexity", "validation.accuracy"]
  table = result["table"].set_index("optim.lr")
  row = table.loc[1e-3]
  mean = 7 / 3
  sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)
  half = T_975_2DOF * sd / math.sqrt(3)
  assert row["n"] == 3
  assert row["validation.loss.mean"] == pytest.approx(mean)
  assert row["validation.loss.sd"] == pytest.approx(sd)
  assert row["validation.loss.ci_low"] == pytest.approx(mean - half, rel=1e-6)
  assert row["validation.loss.ci_high"] == pytest.approx(mean + half, rel=1e-6)
  single = table.loc[3e-3]
  assert single["n"] == 1 and single["validation.loss.mean"] == 3.0
  assert math.isnan(single["validation.loss.sd"]) and math.isnan(single["validation.loss.ci_low"])
  assert f"{mean:.4g} ± {half:.2g} (sd {sd:.2g})" in result["markdown"]
  assert "3 ± - (sd -)" in result["markdown"]

  runs = result["runs"].set_index("run")
  assert len(runs) == 5 and sorted(runs["state"]) == ["done"] * 4 + ["incomplete"]
  assert runs.loc["lr1-0", "train_flops"] == 100 * 8 * 16 * 6000.0
  assert runs.loc["lr1-0", "code"] == "abababab" and runs.loc["lr1-0", "device"] == "cpu x8"
  assert runs.loc["lr3-1", "code"] == "unknown"
  curve = [(r["step"], r["loss"]) for r in report_lib.read_log(str(root / "lr1-0")) if r["split"] == "eval"]
  assert curve == [(20, 9.0), (40, 9.0), (60, 4.4), (80, 4.2), (100, 4.0)]
  for name in ("runs.csv", "report.md", "report.csv", "curves_loss.png", "curves_loss_flops.png",
               "final_optim.lr.png"):
    assert (root / name).exists(), name
  assert (root / "curves_loss.png").read_bytes()[:4] == b"\x89PNG"

  report_lib.main([str(root), "--metric", "validation.loss", "--no-plots"])
  out = capsys.readouterr().out
  assert "validation.loss" in out and "validation.perplexity" not in out
  assert f"wrote {root / 'report.csv'}" in out


def finetune_run(root, system, fraction, seed, accuracy):
  """A fine-tuning run as experiments/finetune.py's sweep writes it: with init_from, the model section is
  the pretrained run's (tasks.config.resolve)."""
  baseline, init_from, family, objective, d_model = system
  config = {"seed": seed, "workdir": f"runs/lf/{seed}", "name": "finetune_topic", "init_from": init_from,
            "model": {"family": family, "d_model": d_model, "dropout_rate": 0.0},
            "objective": {"name": objective}, "data": {"batch_size": 8, "seq_len": 64},
            "tokenizer": {"vocab_size": 2048}, "train": {"num_steps": 300, "log_every": 10},
            "task": {"name": "bbc_topic", "label_fraction": fraction},
            "finetune": {"baseline": baseline, "metric": "auto"}}
  report = {"accuracy": accuracy, "macro_f1": accuracy - 0.1, "per_class": {"sport": {"f1": 0.5, "support": 3}},
            "confusion_matrix": [[1, 0], [0, 1]]}
  metrics = {"name": "finetune_topic", "task": "bbc_topic", "kind": "classification", "metric": "accuracy",
             "label_fraction": fraction, "seed": seed, "validation": dict(report), "test": dict(report)}
  log = []
  if not baseline:
    metrics["validation"]["loss"] = metrics["test"]["loss"] = 1.0
    log = [{"step": s, "split": "eval", "accuracy": accuracy * s / 50, "macro_f1": 0.1, "loss": 1.0}
           for s in (25, 50)]
  name = f"{baseline or init_from or 'scratch'}-{fraction}-{seed}".replace("/", "_")
  write_run(root, name, config, metrics, log)


def test_label_fraction_sweep_gives_a_row_per_system_and_fraction(tmp_path):
  systems = {"TF-IDF + linear SVM": ("tfidf_svm", None, "decoder", "causal_lm", 256),
             "decoder/causal_lm from scratch": ("", None, "decoder", "causal_lm", 256),
             "decoder/causal_lm from gpt_small": ("", "runs/gpt_small", "decoder", "causal_lm", 128),
             "encoder/mlm from bert_small": ("", "runs/bert_small/", "encoder", "mlm", 96)}
  rng = np.random.default_rng(0)
  accuracies = {}
  for name, system in systems.items():
    for fraction in (0.01, 0.1, 1.0):
      accuracies[name, fraction] = rng.uniform(0.2, 1.0, size=2)
      for seed, accuracy in enumerate(accuracies[name, fraction]):
        finetune_run(tmp_path, system, fraction, seed, float(accuracy))

  result = report_lib.report(str(tmp_path))
  # init_from, finetune.baseline, model.* and objective.* differ only between systems: `system` names them.
  assert result["axes"] == ["system", "task.label_fraction"]
  # The baselines have no loss; nested per-class scores and confusion matrices are not metrics.
  assert result["metrics"] == ["validation.accuracy", "validation.macro_f1", "test.accuracy", "test.macro_f1"]
  table = result["table"]
  assert len(table) == 12 and set(table["n"]) == {2}
  assert set(table["system"]) == set(systems)
  for (name, fraction), values in accuracies.items():
    row = table[(table["system"] == name) & (table["task.label_fraction"] == fraction)]
    assert row["test.accuracy.mean"].item() == pytest.approx(values.mean())
  plot = tmp_path / "final_task.label_fraction.png"
  assert str(plot) in result["plots"] and plot.read_bytes()[:4] == b"\x89PNG"
  # Curves of the neural systems' selection metric (the baseline has none).
  assert (tmp_path / "curves_accuracy.png").read_bytes()[:4] == b"\x89PNG"
  assert not result["fits"]  # no loss in the table: nothing to fit


def test_power_law_recovers_known_exponent(tmp_path):
  """L = 5·x^-0.3 + 1.5 at 6 model sizes from 1e4 to 1e8 parameters, 3 seeds each with noise sd 0.003."""
  rng = np.random.default_rng(1)
  sizes = np.geomspace(1e4, 1e8, 6)
  for d_model, parameters in zip((32, 64, 128, 256, 512, 1024), sizes):
    for seed in range(3):
      loss = 5 * parameters ** -0.3 + 1.5 + rng.normal(0, 0.003)
      write_run(tmp_path, f"d{d_model}-{seed}", pretrain_config(seed, d_model=d_model),
                pretrain_metrics(loss, parameters=int(parameters)))
  result = report_lib.report(str(tmp_path), metrics=["validation.loss"], plots=False)
  fit = next(f for f in result["fits"] if f["x_name"] == "parameters")
  assert fit["alpha"] == pytest.approx(0.3, abs=0.03)
  assert fit["c"] == pytest.approx(1.5, abs=0.02)
  low, high = fit["alpha_ci"]
  assert low < 0.3 < high and high - low < 0.1
  assert fit["resamples"] >= 190
  assert fit["line"].startswith("power law: validation.loss = ") and "·parameters^-0." in fit["line"]
  assert fit["line"] in result["markdown"]

  # Noiseless points: the fit itself is exact.
  a, alpha, c = stats.fit_power_law(sizes, 5 * sizes ** -0.3 + 1.5)
  assert (a, alpha, c) == pytest.approx((5, 0.3, 1.5), rel=1e-3)


def test_two_code_versions_become_an_axis_and_where_keeps_one(tmp_path):
  for seed in range(4):
    commit, dirty = ("a" * 40, False) if seed < 2 else ("b" * 40, True)
    write_run(tmp_path, f"r{seed}", pretrain_config(seed), pretrain_metrics(2.0 + seed),
              provenance=[entry(commit, dirty)])
  # A resumed run whose two starts ran different code, and a run from before provenance.json.
  write_run(tmp_path, "resumed", pretrain_config(5), pretrain_metrics(2.0),
            provenance=[entry("a" * 40), entry("c" * 40)])
  write_run(tmp_path, "old", pretrain_config(6), pretrain_metrics(2.0))

  result = report_lib.report(str(tmp_path), plots=False)
  warnings = [w for w in result["warnings"] if "code" in w]
  assert len(warnings) == 1 and all(v in warnings[0] for v in ("aaaaaaaa", "bbbbbbbb-dirty", "mixed", "unknown"))
  assert warnings[0] in result["markdown"]
  # The old run's library versions are unknown too: that column becomes an axis as well.
  assert result["axes"] == ["code", "versions"]
  assert sorted(result["table"]["code"]) == ["aaaaaaaa", "bbbbbbbb-dirty", "mixed", "unknown"]

  kept = report_lib.report(str(tmp_path), where=["code=bbbbbbbb-dirty"], plots=False)
  assert kept["axes"] == [] and not kept["warnings"]
  assert kept["table"]["n"].tolist() == [2]
  assert kept["table"]["validation.loss.mean"].item() == pytest.approx(4.5)  # seeds 2, 3: losses 4 and 5

  versions = report_lib.report(str(tmp_path), where=["code=aaaaaaaa", "seed=1"], plots=False)
  assert versions["runs"]["versions"].item().startswith("jax=0.4.30 flax=0.8.5")  # jaxlib = jax: said once


def test_cli_without_finished_runs_prints_one_error_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as stop:
    report_lib.main([str(tmp_path)])
  assert stop.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: no finished runs (metrics.json) under {tmp_path}; ")

  write_run(tmp_path, "running", pretrain_config(0))
  with pytest.raises(SystemExit):
    report_lib.main([str(tmp_path), "--no-plots"])
  assert capsys.readouterr().err.startswith("error: no finished runs (metrics.json) under")

  write_run(tmp_path, "done", pretrain_config(1), pretrain_metrics(2.0))
  for args, message in ((["--where", "optim.rl=0.001"], "did you mean optim.lr?"),
                        (["--metric", "validation.los"], "did you mean validation.loss"),
                        (["--where", "optim.lr=0.5"], "no finished runs (metrics.json) under")):
    with pytest.raises(SystemExit):
      report_lib.main([str(tmp_path), "--no-plots", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_paired_difference_by_hand():
  # Seed 3 is only in a; the pairs differ by 0.1, 0.2, 0.3 (mean 0.2, sd 0.1, t(2) = 4.303).
  a, b = {0: 0.6, 1: 0.5, 2: 0.9, 3: 0.1}, {0: 0.5, 1: 0.3, 2: 0.6}
  d = stats.paired_difference(a, b)
  assert d["seeds"] == [0, 1, 2] and d["n"] == 3
  assert d["mean"] == pytest.approx(0.2) and d["sd"] == pytest.approx(0.1)
  half = 4.302653 * 0.1 / math.sqrt(3)
  assert (d["ci_low"], d["ci_high"]) == (pytest.approx(0.2 - half, abs=1e-6), pytest.approx(0.2 + half, abs=1e-6))
  # Unpaired, the same values overlap: pairing is what removes the shared seed variation.
  assert stats.interval(list(a.values())[:3])["ci_low"] < stats.interval(list(b.values()))["ci_high"]
