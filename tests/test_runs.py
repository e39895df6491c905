"""Whole runs in-process, through the functions launch.py calls: pretraining of every family with its
samples, exact resume, sampling, fine-tuning and prediction, and the errors a user gets for bad input
(launch.py prints a ConfigError / CheckpointError as one `error:` line; test_launch.py checks that)."""

import json
import os
import re
import shutil

import pytest

from launching import capture, experiment_config
from lmlab.data import bbc_news
from lmlab.decode.complete import sample_workdir
from lmlab.errors import CheckpointError, ConfigError, DataError, Diverged, UserError
from lmlab.tasks import finetune
from lmlab.tasks.predict import predict_workdir
from lmlab.train import loop, ngram_run
from lmlab.train.workdir import lock


def train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def metrics_json(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


# A 2 x 2 x 2 mesh over the 8 test devices: data, FSDP and tensor parallelism in the real loop.
MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}


def pretrain(spec, workdir, data_dir, **overrides):
  cfg = experiment_config(spec, workdir=str(workdir), **{"data.tfds_data_dir": data_dir}, **overrides)
  run = ngram_run.run if cfg.model.family == "ngram" else loop.train_and_evaluate
  _, stdout = capture(run, cfg)
  return str(workdir), stdout


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, bbc_data_dir):
  return pretrain("gpt.py:size=tiny", tmp_path_factory.mktemp("runs") / "gpt", bbc_data_dir,
                  **{"train.log_every": 1}, **MESH)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, bbc_data_dir):
  return pretrain("bert.py:size=tiny", tmp_path_factory.mktemp("runs") / "bert", bbc_data_dir)


def test_train_writes_metrics_checkpoints_and_samples(gpt_run):
  workdir, stdout = gpt_run
  assert f"Work directory: {workdir}" in stdout and "step     20/20 | loss" in stdout
  assert "Mesh {'data': 2, 'fsdp': 2, 'tensor': 2} over 8 cpu devices" in stdout
  summary = metrics_json(workdir)
  assert summary["step"] == 20 and summary["parameters"] > 0
  losses = train_losses(workdir)
  assert sorted(losses) == list(range(1, 21))
  assert losses[20] < losses[1] - 0.5, "training must reduce the loss"
  assert 0 < summary["validation"]["loss"] < losses[1]
  assert summary["validation"]["perplexity"] == pytest.approx(2.718281828 ** summary["validation"]["loss"], rel=1e-6)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  from tensorboard.backend.event_processing import event_accumulator  # what TensorBoard reads with
  events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
  events.Reload()
  assert [e.step for e in events.Scalars("train/loss")] == sorted(losses)
  assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([losses[s] for s in sorted(losses)])
  assert events.Scalars("eval/loss")[-1].step == 20
  assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
  assert stdout.count("sample: ") == 2


def interrupted_copy(workdir, target, step=10):
  """A copy of a finished run as it was when it died right after the checkpoint at `step`."""
  shutil.copytree(workdir, target)
  for name in os.listdir(os.path.join(target, "checkpoints")):
    if int(name) > step:
      shutil.rmtree(os.path.join(target, "checkpoints", name))
  with open(os.path.join(target, "metrics.jsonl")) as f:
    rows = [line for line in f if json.loads(line)["step"] <= step]
  with open(os.path.join(target, "metrics.jsonl"), "w") as f:
    f.writelines(rows)
  os.remove(os.path.join(target, "metrics.json"))
  return str(target)


def test_resume_repeats_the_uninterrupted_losses_exactly(gpt_run, tmp_path, bbc_data_dir):
  workdir, _ = gpt_run
  resumed = interrupted_copy(workdir, tmp_path / "resumed")
  _, stdout = pretrain("gpt.py:size=tiny", resumed, bbc_data_dir, **{"train.log_every": 1}, **MESH)
  assert "Resumed from step 10" in stdout
  assert train_losses(resumed) == train_losses(workdir)  # bitwise: same batches, same dropout keys
  assert metrics_json(resumed)["validation"] == metrics_json(workdir)["validation"]


def test_resuming_with_another_model_is_refused(gpt_run, bbc_data_dir):
  workdir, _ = gpt_run
  with pytest.raises(ConfigError, match="different config.model"):
    pretrain("gpt.py:size=tiny", workdir, bbc_data_dir, **{"model.d_model": 32}, **MESH)


def damage(checkpoint_dir):
  for folder, _, names in os.walk(os.path.join(checkpoint_dir, "state")):
    for name in names:  # flip bytes in the middle of every array-data file
      if os.path.basename(folder) == "d":
        path = os.path.join(folder, name)
        data = bytearray(open(path, "rb").read())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        open(path, "wb").write(bytes(data))


def test_a_damaged_latest_checkpoint_is_kept_and_the_previous_one_resumes(gpt_run, tmp_path, bbc_data_dir):
  damaged = interrupted_copy(gpt_run[0], tmp_path / "damaged", step=20)
  damage(os.path.join(damaged, "checkpoints", "20"))
  _, stdout = pretrain("gpt.py:size=tiny", damaged, bbc_data_dir, **{"train.log_every": 1}, **MESH)
  warning = next(line for line in stdout.splitlines() if line.startswith("warning: "))
  assert "checkpoints/20" in warning and "trying the previous one" in warning
  assert "Resumed from step 10" in stdout
  # Kept, never deleted, with the checksums that caught it.
  assert sorted(os.listdir(os.path.join(damaged, "damaged_checkpoints"))) == ["20", "20.checksums.json"]
  assert train_losses(damaged) == train_losses(gpt_run[0])  # and the run ends as the uninterrupted one


def test_no_intact_checkpoint_is_one_error(gpt_run, tmp_path, bbc_data_dir):
  damaged = interrupted_copy(gpt_run[0], tmp_path / "damaged", step=10)
  damage(os.path.join(damaged, "checkpoints", "10"))
  with pytest.raises(CheckpointError, match=r"No intact checkpoint is left"):
    pretrain("gpt.py:size=tiny", damaged, bbc_data_dir, **MESH)
  assert sorted(os.listdir(os.path.join(damaged, "damaged_checkpoints"))) == ["10", "10.checksums.json"]


def test_a_diverging_run_stops_and_saves_nothing_after_the_divergence(tmp_path, bbc_data_dir):
  workdir = tmp_path / "nan"
  with pytest.raises(Diverged, match=r"became NaN or infinite between steps \d+ and \d+; nothing after step 0"):
    pretrain("gpt.py:size=tiny", workdir, bbc_data_dir, **{"optim.lr": 1e12, "optim.grad_clip": 0.0}, **MESH)
  assert not os.listdir(workdir / "checkpoints") and not (workdir / "metrics.json").exists()


def test_a_second_run_in_a_live_work_directory_is_refused(gpt_run, bbc_data_dir):
  workdir, _ = gpt_run
  with lock(workdir):  # as another live run would hold it
    with pytest.raises(UserError, match=rf"{workdir} is in use: pid {os.getpid()} on host "):
      pretrain("gpt.py:size=tiny", workdir, bbc_data_dir, **MESH)
  assert sample_workdir(workdir, ["The"])  # reading needs no lock


def test_sampling_is_reproducible(gpt_run):
  workdir, _ = gpt_run
  prompts = ["The government", "Shares"]
  first = sample_workdir(workdir, prompts, seed=3, overrides={"max_new_tokens": 6})
  assert [p for p, _ in first] == prompts and all(text for _, text in first)
  assert sample_workdir(workdir, prompts, seed=3, overrides={"max_new_tokens": 6}) == first
  greedy = sample_workdir(workdir, prompts, overrides={"temperature": 0.0, "max_new_tokens": 6})
  assert greedy == sample_workdir(workdir, prompts, seed=9, overrides={"temperature": 0.0, "max_new_tokens": 6})
  # Beam search (the README's `sample --beam_size 4`) is deterministic.
  beams = sample_workdir(workdir, prompts, overrides={"beam_size": 4, "max_new_tokens": 6})
  assert beams == sample_workdir(workdir, prompts, seed=5, overrides={"beam_size": 4, "max_new_tokens": 6})


@pytest.mark.parametrize("experiment, expect, prompt", [
    ("bert.py:size=tiny",
     ["objective mlm_nsp", "nsp accuracy", "sample: Shares in the [MASK] rose sharply. -> [MASK] 1: "],
     "The [MASK] said"),
    ("lstm.py:size=tiny,cell=gru", ["objective causal_lm", "step     20/20", "sample: The government said -> "],
     "The government said"),
    ("gpt.py:size=tiny,objective=prefix_lm", ["objective prefix_lm", "sample: The government said -> "],
     "Shares in the company"),
    ("t5.py:size=tiny", ["objective span_corruption", "sample: Shares in the <extra_id_0> sharply on "],
     "The <extra_id_0> said"),
    ("ngram.py:size=tiny,order=3", ["3-gram Kneser-Ney: validation loss"], None),
])
def test_every_family_trains_evaluates_and_samples(experiment, expect, prompt, request, tmp_path, bbc_data_dir):
  if experiment.startswith("bert"):
    workdir, stdout = request.getfixturevalue("bert_run")
  elif "prefix_lm" in experiment:  # its sampling path is what is new here: a shorter run
    workdir, stdout = pretrain(experiment, tmp_path / "run", bbc_data_dir, **{
        "train.num_steps": 10, "train.eval_every": 0, "train.checkpoint_every": 10})
  else:  # and the validation articles that are not near-duplicates of training articles
    workdir, stdout = pretrain(experiment, tmp_path / "run", bbc_data_dir, **{"data.eval_dedup": 0.5})
    novel = metrics_json(workdir)["validation_dedup"]
    kept, total = map(int, re.search(r"shingles in the training split\): (\d+) of (\d+) documents", stdout).groups())
    assert 0 < novel["documents"] == kept < total and 1.0 < novel["perplexity"] < 512
  for text in expect:
    assert text in stdout, (text, stdout[-2000:])
  assert 1.0 < metrics_json(workdir)["validation"]["perplexity"] < 512  # better than uniform over 512 pieces
  if prompt is None:
    with pytest.raises(ConfigError, match="n-gram baseline run"):
      sample_workdir(workdir, ["The"])
    return
  [(given, text)] = sample_workdir(workdir, [prompt], overrides={"max_new_tokens": 4})
  assert given == prompt and text


def finetune_config(workdir, data_dir, init_from, size="tiny", **overrides):
  return experiment_config(f"finetune.py:size={size},task=topic", workdir=str(workdir), init_from=init_from,
                           **{"data.tfds_data_dir": data_dir}, **overrides)


@pytest.mark.parametrize("pretrained", ["gpt_run", "bert_run"])
def test_pretrain_finetune_predict(pretrained, request, tmp_path, bbc_data_dir):
  pre_dir = request.getfixturevalue(pretrained)[0]
  workdir = str(tmp_path / "topic")
  summary, stdout = capture(finetune.run, finetune_config(workdir, bbc_data_dir, pre_dir))
  assert f"pretrained tensors from {pre_dir} step 20" in stdout and "confusion matrix" in stdout
  assert summary == metrics_json(workdir)
  assert len(summary["test"]["confusion_matrix"]) == 5 and summary["train_examples"] > 1000
  assert sum(map(sum, summary["test"]["confusion_matrix"])) == 217  # every test article, once
  assert summary["num_steps"] == 8 and summary["warmup_steps"] == 0  # 0.1 epochs, capped by train.num_steps
  results = predict_workdir(workdir, ["Shares in the bank rose after profits beat forecasts", "The striker scored"])
  assert len(results) == 2 and all(r["label"] in bbc_news.TOPICS for r in results)
  assert sum(results[0]["probabilities"].values()) == pytest.approx(1.0, abs=2e-3)
  with pytest.raises(ConfigError, match="is a fine-tuning run; use `launch.py predict"):
    sample_workdir(workdir)


def test_finetuning_refuses_another_tokenizer(gpt_run, tmp_path, bbc_data_dir):
  with pytest.raises(ConfigError, match="does not match the pretraining run"):
    finetune.run(finetune_config(tmp_path / "x", bbc_data_dir, gpt_run[0], size="small"))
  assert not (tmp_path / "x").exists()


def test_data_the_tokenizer_cannot_read_stops_before_training(gpt_run, tmp_path, bbc_data_dir):
  """Chinese text files with the English corpus's tokenizer (copied in, as a reused work directory would
  have it): the run stops at once with the unknown-token rate and the fix."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(40):
    (corpus / f"{i}.txt").write_text("这部电影非常好看，演员表演出色。服务太差了，再也不来了。" * (i + 1), encoding="utf-8")
  workdir = tmp_path / "zh"
  workdir.mkdir()
  shutil.copy(os.path.join(gpt_run[0], "tokenizer.model"), workdir / "tokenizer.model")
  with pytest.raises(DataError, match=r"% of the tokens of the training split are unknown to the tokenizer"):
    pretrain("gpt.py:size=tiny", workdir, bbc_data_dir, **{"data.source": "text_files",
                                                           "data.text_glob": str(corpus / "*.txt")}, **MESH)
  assert not (workdir / "checkpoints").exists()
