"""Fine-tuning: transfer from a pretraining run of every family, pooling, layer-wise rates and freezing,
task inputs, a toy task learned to 100%, the baseline in the same harness, and bad init_from runs."""

import json
import os
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launching import capture
from lmlab import config as config_lib
from lmlab import models
from lmlab.config import ConfigError
from lmlab.data import tokenizer
from lmlab.errors import DataError, Diverged
from lmlab.models import heads
from lmlab.tasks import config as task_config
from lmlab.tasks import finetune, inputs, metrics
from lmlab.tasks.predict import predict_workdir
from lmlab.train import checkpoint, optimizer, partitioning, trainer

V = 64
QUIET = types.SimpleNamespace(print=lambda text: None)
FAMILIES = [("decoder", "causal_lm"), ("encoder", "mlm_nsp"), ("encoder_decoder", "span_corruption"),
            ("rnn", "causal_lm"), ("rnn", "mlm")]


def tiny(cfg, family, objective):
  cfg.model.family, cfg.objective.name = family, objective
  cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads, cfg.model.mlp_dim = 2, 32, 2, 64
  cfg.data.seq_len, cfg.data.batch_size = 16, 8
  cfg.tokenizer.vocab_size, cfg.tokenizer.num_sentinels = V, 4
  cfg.mesh.data = 1
  return cfg


def mesh():
  return partitioning.make_mesh((1, 1, 1), jax.devices()[:1])


def pretrain_dir(path, family, objective):
  """A pretraining work directory: config.json and one checkpoint of a randomly initialized model."""
  cfg = tiny(config_lib.default_config(), family, objective)
  cfg.optim.warmup_steps = 1
  config_lib.validate(cfg)
  trn = trainer.Trainer(cfg, V, mesh())
  state = trn.init_state(jax.random.PRNGKey(7))
  manager = checkpoint.make_manager(str(path), 2)
  checkpoint.save(manager, state, {})
  manager.wait_until_finished()
  manager.close()
  with open(path / "config.json", "w") as f:
    f.write(cfg.to_json())
  return str(path), jax.device_get(state.params)


def finetune_config(init_from=None, task="bbc_topic", family="decoder", objective="causal_lm", **changes):
  cfg = tiny(task_config.default_config(), family, objective)
  cfg.init_from, cfg.task.name = init_from, task
  for key, value in changes.items():
    config_lib.set_by_path(cfg, key, value)
  return task_config.resolve(cfg)


def task_trainer(cfg, num_classes, **options):
  return trainer.get_trainer(cfg, V, mesh(), num_classes=num_classes, pooling=task_config.pooling(cfg), **options)


def transferred(cfg, num_classes):
  trn = task_trainer(cfg, num_classes)
  init = jax.device_get(trn.init_state(jax.random.PRNGKey(0)))
  state = finetune.start_from_pretrained(cfg, trn, trn.init_state(jax.random.PRNGKey(0)), V, QUIET)
  return init, jax.device_get(state)


@pytest.mark.parametrize("family,objective", FAMILIES)
def test_classifier_body_is_the_pretrained_model_and_the_head_is_new(family, objective, tmp_path):
  pre_dir, pre_params = pretrain_dir(tmp_path, family, objective)
  cfg = finetune_config(pre_dir)  # the architecture comes from the pretraining run, not from here
  assert (cfg.model.family, cfg.objective.name) == (family, objective)
  init, state = transferred(cfg, num_classes=5)
  body = flax.traverse_util.flatten_dict(state.params["body"])
  pre = flax.traverse_util.flatten_dict(pre_params)
  assert body and all(np.array_equal(value, pre[key]) for key, value in body.items())
  fresh = flax.traverse_util.flatten_dict(init.params["body"])
  assert any(not np.array_equal(fresh[key], value) for key, value in body.items()), "seeds must differ"
  for a, b in zip(jax.tree_util.tree_leaves(state.params["head"]), jax.tree_util.tree_leaves(init.params["head"])):
    np.testing.assert_array_equal(a, b)
  assert state.params["head"]["kernel"].shape == (32, 5)
  assert int(state.step) == 0


@pytest.mark.parametrize("family,objective", [("decoder", "causal_lm"), ("encoder_decoder", "span_corruption")])
def test_generation_starts_from_the_whole_pretrained_model(family, objective, tmp_path):
  pre_dir, pre_params = pretrain_dir(tmp_path, family, objective)
  _, state = transferred(finetune_config(pre_dir, task="bbc_headline", **{"task.max_target_len": 4}), 0)
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, pre_params)


def test_bad_init_from_is_rejected_before_compute(tmp_path):
  pre_dir, _ = pretrain_dir(tmp_path / "pre", "decoder", "causal_lm")
  with pytest.raises(ConfigError, match=r"tokenizer.vocab_size = 128 \(pretrained: 64\)"):
    finetune_config(pre_dir, **{"tokenizer.vocab_size": 128})
  with pytest.raises(ConfigError, match="config.json does not exist"):
    finetune_config(str(tmp_path / "nowhere"))
  cfg = finetune_config(os.path.join(pre_dir, "checkpoints", "5"))
  trn = task_trainer(cfg, 5)
  with pytest.raises(checkpoint.CheckpointError, match=r"saved steps: \[0\]"):
    finetune.start_from_pretrained(cfg, trn, trn.init_state(jax.random.PRNGKey(0)), V, QUIET)
  with pytest.raises(ConfigError, match="needs a decoder, causal rnn or encoder_decoder"):
    task_config.validate(finetune_config(None, task="bbc_headline", family="encoder", objective="mlm"))


def test_pooling_picks_first_last_and_mean_of_the_real_tokens():
  x_BLD = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  seg_BL = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  np.testing.assert_allclose(heads.pool(x_BLD, seg_BL, "first"), x_BLD[:, 0])
  np.testing.assert_allclose(heads.pool(x_BLD, seg_BL, "last"), np.stack([x_BLD[0, 2], x_BLD[1, 4]]))
  np.testing.assert_allclose(heads.pool(x_BLD, seg_BL, "mean"),
                             np.stack([x_BLD[0, :3].mean(0), x_BLD[1].mean(0)]), rtol=1e-6)


def test_last_text_pools_the_token_before_the_closing_one_and_auto_pools_what_pretraining_trained():
  x_BLD = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  seg_BL = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  np.testing.assert_allclose(heads.pool(x_BLD, seg_BL, "last_text"), np.stack([x_BLD[0, 1], x_BLD[1, 3]]))
  np.testing.assert_allclose(heads.pool(x_BLD, seg_BL, "pooler"), x_BLD[:, 0])  # the dense + tanh follow
  auto = {(family, objective): task_config.pooling(finetune_config(family=family, objective=objective))
          for family, objective in FAMILIES + [("decoder", "prefix_lm"), ("encoder", "mlm")]}
  # [CLS] through BERT's pooler for encoders; for the rest the mean, never EOS (which causal pretraining
  # never trains as an input).
  assert auto == {("decoder", "causal_lm"): "mean", ("encoder", "mlm_nsp"): "pooler",
                  ("encoder_decoder", "span_corruption"): "mean", ("rnn", "causal_lm"): "mean",
                  ("rnn", "mlm"): "mean", ("decoder", "prefix_lm"): "mean", ("encoder", "mlm"): "pooler"}


@pytest.mark.parametrize("objective", ["mlm_nsp", "mlm"])
def test_bert_pooler_is_transferred_when_the_checkpoint_has_one(objective, tmp_path):
  pre_dir, pre_params = pretrain_dir(tmp_path, "encoder", objective)
  cfg = finetune_config(pre_dir)
  assert task_config.pooling(cfg) == "pooler"
  init, state = transferred(cfg, num_classes=5)
  for name in ("kernel", "bias"):
    if objective == "mlm_nsp":  # pretrained with next-sentence prediction: its pooler
      np.testing.assert_array_equal(state.params["pooler"][name], pre_params["pooler"][name])
      assert not np.array_equal(state.params["pooler"]["kernel"], init.params["pooler"]["kernel"])
    else:  # plain masked LM has no pooler: a fresh one, like the head
      np.testing.assert_array_equal(state.params["pooler"][name], init.params["pooler"][name])


@pytest.mark.parametrize("family,objective", [("decoder", "causal_lm"), ("encoder", "mlm_nsp")])
def test_chunked_pooling_equals_single_row_pooling_on_short_texts(family, objective):
  sp = WordTokenizer()
  words = np.random.default_rng(0).integers(1, 40, 30)
  texts = ["a bb ccc", " ".join("x" * n for n in words)]  # 3 words; 30 words: 3 chunks of 14 (+ the frame)
  single = inputs.classification_arrays(sp, texts, family, seq_len=16, labels=[0, 1])
  chunked = inputs.classification_arrays(sp, texts, family, seq_len=16, labels=[0, 1], max_chunks=4)
  assert chunked["tokens"].shape == (2, 4, 16)
  np.testing.assert_array_equal(chunked["tokens"][:, 0], single["tokens"])  # the first chunk is the cut row
  assert chunked["segment_ids"][0, 1:].sum() == 0 and chunked["segment_ids"][1, :3].all(-1).any()
  assert chunked["segment_ids"][1, 3].sum() == 0
  cfg = finetune_config(family=family, objective=objective)
  # (A causal decoder's first token, BOS in every chunk, has the same features in all: no pooler there.)
  for pooling in ("mean", "last_text") + (("pooler",) if family == "encoder" else ()):
    model = models.build(cfg, V, 3, pooling)
    params = model.init(jax.random.PRNGKey(0), single["tokens"])
    run = lambda arrays: models.apply(model, params, arrays)["logits"]
    out_single, out_chunked = run(single), run(chunked)
    np.testing.assert_allclose(out_chunked[0], out_single[0], atol=1e-5)  # one chunk: the same features
    # Several chunks: features combined (mean pooling: weighted by tokens), not those of the first row.
    assert not np.allclose(out_chunked[1], out_single[1], atol=1e-4)
    # Chunking is a function of each chunk alone: the logits of a text's chunks read as separate
    # one-chunk examples combine to the text's (through the linear head; mean pooling by token count).
    rows = {k: v[1][:3] for k, v in chunked.items() if v.ndim > 1}
    per_chunk = run(dict(rows, targets=np.zeros(3, np.int32), weights=np.ones(3, np.float32)))
    counts = rows["segment_ids"].sum(-1) if pooling == "mean" else np.ones(3)
    np.testing.assert_allclose(out_chunked[1], (per_chunk * counts[:, None]).sum(0) / counts.sum(), atol=1e-4)


@pytest.mark.parametrize("scan", [False, True])
def test_layer_decay_scales_by_depth_and_freezing_zeroes_the_body(scan):
  cfg = finetune_config(**{"model.scan_layers": scan})
  model = models.build(cfg, V, 3, task_config.pooling(cfg))
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((2, 16), np.int32)))["params"]
  scales = flax.traverse_util.flatten_dict(optimizer.layer_lr_scales(boxed, 2, 0.5))
  assert scales[("head", "kernel")] == 1.0
  assert scales[("body", "embed", "embedding")] == 0.5 ** 3
  assert scales[("body", "ln_final", "scale")] == 0.5
  if scan:
    np.testing.assert_allclose(scales[("body", "blocks", "mlp", "wi", "kernel")].ravel(), [0.25, 0.5])
  else:
    assert scales[("body", "block_0", "mlp", "wi", "kernel")] == 0.25
    assert scales[("body", "block_1", "mlp", "wi", "kernel")] == 0.5
  frozen = flax.traverse_util.flatten_dict(optimizer.layer_lr_scales(boxed, 2, 1.0, freeze_body=True))
  assert frozen[("head", "kernel")] == 1.0 and all(v == 0 for k, v in frozen.items() if k[0] == "body")


def test_a_frozen_body_does_not_move():
  cfg = finetune_config(**{"finetune.freeze_body": True, "optim.warmup_steps": 0})
  trn = task_trainer(cfg, 3, freeze_body=True)
  before = jax.device_get(trn.init_state(jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(8, V, (8, 16)).astype(np.int32), "segment_ids": np.ones((8, 16), np.int32),
           "targets": rng.integers(0, 3, 8).astype(np.int32), "weights": np.ones(8, np.float32)}
  state = trn.init_state(jax.random.PRNGKey(0))
  for _ in range(2):
    state, _ = trn.train_step(state, partitioning.global_batch(batch, trn.mesh))
  after = jax.device_get(state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, after.params["body"], before.params["body"])
  assert not np.allclose(after.params["head"]["kernel"], before.params["head"]["kernel"])


class WordTokenizer:
  """encode(texts) -> one id per word (its length + 10), as sentencepiece's batch call returns."""

  def encode(self, texts):
    return [[10 + len(w) for w in t.split()] for t in texts]


def test_generation_inputs_train_on_the_target_and_eos_only():
  sp = WordTokenizer()
  arrays = inputs.generation_arrays(sp, ["a bb ccc", "dddd"], ["ee f", "g"], "decoder", seq_len=12,
                                    max_target_len=3)
  for row in range(2):
    weighted = arrays["targets"][row][arrays["weights"][row] > 0].tolist()
    assert weighted == sp.encode([["ee f", "g"][row]])[0] + [tokenizer.EOS_ID]
    prompt = inputs.prompts(sp, [["a bb ccc", "dddd"][row]], "decoder", 12, 3)[0]
    assert arrays["tokens"][row][:len(prompt)].tolist() == prompt and prompt[-1] == tokenizer.SEP_ID
  encdec = inputs.generation_arrays(sp, ["a bb"], ["ee f"], "encoder_decoder", seq_len=8, max_target_len=3)
  assert encdec["encoder_tokens"][0].tolist() == [11, 12, tokenizer.EOS_ID, 0, 0, 0, 0, 0]
  assert encdec["targets"][0].tolist() == [12, 11, tokenizer.EOS_ID, 0]
  assert encdec["decoder_inputs"][0].tolist() == [tokenizer.BOS_ID, 12, 11, 0]
  classify = inputs.classification_arrays(sp, ["a bb"], "encoder", seq_len=4, labels=[2])
  assert classify["tokens"][0].tolist() == [tokenizer.CLS_ID, 11, 12, tokenizer.SEP_ID]



def test_a_prefix_lm_reads_task_inputs_as_its_prefix():
  """A decoder pretrained as a prefix LM fine-tunes with the input as its bidirectional prefix: the whole
  text to classify, or the generation prompt [BOS] source [SEP] (the target stays causal)."""
  sp = WordTokenizer()
  generation = inputs.generation_arrays(sp, ["a bb ccc"], ["ee f"], "decoder", seq_len=12, max_target_len=3,
                                        prefix=True)
  assert generation["prefix"][0].tolist() == [1] * 5 + [0] * 7  # BOS a bb ccc SEP
  assert "prefix" not in inputs.generation_arrays(sp, ["a"], ["b"], "decoder", seq_len=12, max_target_len=3)
  classify = inputs.classification_arrays(sp, ["a bb", "c"], "decoder", seq_len=6, prefix=True)
  np.testing.assert_array_equal(classify["prefix"], classify["segment_ids"])
  cfg = task_config.default_config()
  cfg.objective.name = "prefix_lm"
  assert task_config.prefix_input(cfg)
  cfg.objective.name = "causal_lm"
  assert not task_config.prefix_input(cfg)
  # The classifier passes the prefix to its body: the first token's features see the last token.
  model = models.build(cfg_for_prefix_classifier(), 64, num_classes=3, pooling="first")
  tokens = jnp.asarray([[2, 20, 21, 22, 3, 0]], jnp.int32)
  seg = (tokens > 0).astype(jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, seg)
  changed = tokens.at[0, 3].set(30)
  run = jax.jit(lambda x, prefix: model.apply(params, x, seg, prefix_BL=prefix))  # prefix 0: causal
  assert np.allclose(run(tokens, 0 * seg), run(changed, 0 * seg))  # causal: the first token never sees token 3
  assert not np.allclose(run(tokens, seg), run(changed, seg))


def cfg_for_prefix_classifier():
  cfg = task_config.default_config()
  cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads, cfg.model.mlp_dim = 1, 16, 2, 32
  cfg.objective.name, cfg.data.seq_len = "prefix_lm", 6
  return cfg


def test_train_order_sees_every_example_once_per_epoch():
  order = inputs.train_order(10, 4, 5, seed=0)  # 20 rows = 2 epochs
  stream = order.ravel()
  assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
  assert not np.array_equal(order, inputs.train_order(10, 4, 5, seed=1))


# --- A toy task from the user's files, end to end through finetune.run.

WORDS = {"sport": "goal match striker keeper league cup referee penalty",
         "money": "shares profit bank market investor dividend bond fund",
         "music": "album singer guitar concert chart band song tour"}


def toy_files(tmp_path, seed=0):
  rng = np.random.default_rng(seed)
  paths = {}
  for split, count in (("train", 16), ("validation", 6), ("test", 6)):
    rows = [{"text": " ".join(rng.choice(WORDS[label].split(), 6)), "label": label}
            for label in WORDS for _ in range(count)]
    paths[split] = str(tmp_path / f"{split}.jsonl")
    with open(paths[split], "w") as f:
      f.writelines(json.dumps(row) + "\n" for row in rows)
  return paths


def toy_config(tmp_path, bbc_data_dir, **changes):
  cfg = finetune_config(**{"task.name": "classification_file", "data.tfds_data_dir": bbc_data_dir,
                           "tokenizer.vocab_size": 512, "tokenizer.model_type": "bpe", "data.batch_size": 8,
                           "mesh.data": -1,
                           "optim.lr": 3e-3, "train.num_steps": 60, "finetune.min_steps": 60,
                           "train.eval_every": 20, "train.log_every": 20, **changes})
  for split, path in toy_files(tmp_path).items():
    cfg.task[f"{split}_file"] = path
  cfg.workdir = str(tmp_path / "run")
  return cfg


def test_fine_tuning_learns_a_separable_toy_task_to_100_percent(tmp_path, bbc_data_dir):
  summary = finetune.run(toy_config(tmp_path, bbc_data_dir, **{
      "train.num_steps": 100, "finetune.min_steps": 100, "train.eval_every": 10, "finetune.patience": 2}))
  assert summary["test"]["accuracy"] == 1.0 and summary["test"]["macro_f1"] == 1.0
  # Validation accuracy cannot beat 1.0: early stopping ends the run two evaluations after it first gets
  # there, and only the best checkpoint (orbax breaks ties by recency) is kept.
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    evals = [row for row in map(json.loads, f) if row["split"] == "eval"]
  first_perfect = next(row["step"] for row in evals if row["accuracy"] == 1.0)
  assert summary["steps_run"] == first_perfect + 20 < 100
  assert os.listdir(tmp_path / "run" / "checkpoints") == [str(summary["best_step"])]
  assert summary["test"]["confusion_matrix"] == [[6, 0, 0], [0, 6, 0], [0, 0, 6]]
  workdir = str(tmp_path / "run")
  assert os.path.exists(os.path.join(workdir, "confusion_matrix.png"))
  predictions = predict_workdir(workdir, ["the striker scored a penalty", "bank shares and profit"])
  assert [p["label"] for p in predictions] == ["sport", "money"]
  assert sum(predictions[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
  with pytest.raises(ConfigError, match="holds a finished fine-tuning run"):
    finetune.run(toy_config(tmp_path, bbc_data_dir))


def test_the_baseline_runs_in_the_same_harness_with_the_same_layout(tmp_path, bbc_data_dir):
  summary = finetune.run(toy_config(tmp_path, bbc_data_dir, **{"finetune.baseline": "tfidf_svm"}))
  assert summary["test"]["accuracy"] == 1.0
  assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(summary["test"])
  with open(tmp_path / "run" / "metrics.json") as f:
    assert json.load(f)["baseline"]["method"] == "tfidf_svm"
  assert predict_workdir(str(tmp_path / "run"), ["album and guitar tour"])[0]["label"] == "music"


HEADLINES = {"sport": "match report", "money": "market news", "music": "album review"}


def toy_generation_files(tmp_path):
  """train/validation/test.csv: six words of one topic -> that topic's fixed two-word headline."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 16), ("validation", 4), ("test", 4)):
    with open(tmp_path / f"{split}.csv", "w") as f:
      f.write("source,target\n")
      for label in WORDS:
        for _ in range(count):
          f.write(f"{' '.join(rng.choice(WORDS[label].split(), 6))},{HEADLINES[label]}\n")


def test_lead_baseline_scores_the_first_words_of_each_source(tmp_path):
  toy_generation_files(tmp_path)
  cfg = finetune_config(**{"task.name": "generation_file", "finetune.baseline": "lead", "mesh.data": -1})
  for split in ("train", "validation", "test"):
    cfg.task[f"{split}_file"] = str(tmp_path / f"{split}.csv")
  cfg.workdir = str(tmp_path / "run")
  summary = finetune.run(cfg)
  sources = [line.split(",")[0] for line in (tmp_path / "test.csv").read_text().splitlines()[1:]]
  targets = [line.split(",")[1] for line in (tmp_path / "test.csv").read_text().splitlines()[1:]]
  leads = [" ".join(s.split()[:2]) for s in sources]  # 2: the median headline length in words
  assert summary["baseline"] == {"method": "lead", "words": 2}
  assert summary["test"]["rougeL"] == pytest.approx(metrics.generation_report(leads, targets)["rougeL"])
  assert predict_workdir(cfg.workdir, ["one two three"]) == [{"output": "one two"}]
  with pytest.raises(ConfigError, match="'lead' is a generation baseline"):
    task_config.validate(finetune_config(**{"finetune.baseline": "lead"}))


@pytest.mark.parametrize("family,objective", [("decoder", "causal_lm"), ("encoder_decoder", "span_corruption")])
def test_generation_learns_a_source_dependent_target(family, objective, tmp_path, bbc_data_dir):
  """Sources of each topic map to that topic's fixed headline: ROUGE-L 100 needs the targets, weights
  and decoding prompt to line up, and the model to read the source."""
  toy_generation_files(tmp_path)
  cfg = finetune_config(family=family, objective=objective, **{
      "task.name": "generation_file", "task.max_target_len": 8, "data.seq_len": 32, "data.tfds_data_dir": bbc_data_dir,
      "tokenizer.vocab_size": 512, "tokenizer.model_type": "bpe", "data.batch_size": 8, "optim.lr": 1e-2,
      "mesh.data": -1, "train.num_steps": 100, "finetune.min_steps": 100, "train.eval_every": 50,
      "train.log_every": 50})
  for split in ("train", "validation", "test"):
    cfg.task[f"{split}_file"] = str(tmp_path / f"{split}.csv")
  cfg.workdir = str(tmp_path / "run")
  summary = finetune.run(cfg)
  assert summary["test"]["rougeL"] == pytest.approx(100.0), summary["test"]
  with open(tmp_path / "run" / "test_predictions.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 12 and all(r["prediction"] == r["target"] for r in rows)
  predicted = predict_workdir(str(tmp_path / "run"), ["goal match striker keeper league cup"])
  assert predicted == [{"output": "match report"}]


def test_a_task_the_tokenizer_cannot_read_stops_with_the_fix(tmp_path, bbc_data_dir):
  """Chinese reviews against the English corpus's tokenizer: almost every token would be <unk>."""
  cfg = toy_config(tmp_path, bbc_data_dir)
  reviews = ["这部电影非常好看，演员表演出色", "服务太差了，再也不来了", "质量很好，物流也快", "完全不值这个价格"]
  for split in ("train", "validation", "test"):
    path = tmp_path / f"{split}_zh.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": ["good", "bad"][i % 2]}) + "\n"
                            for i, t in enumerate(reviews * 3)), encoding="utf-8")
    cfg.task[f"{split}_file"] = str(path)
  with pytest.raises(DataError, match=r"% of the tokens of the task's training texts are unknown .*"
                                      r"--config\.task\.tokenizer=task"):
    finetune.run(cfg)
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
  # The fix the message names: a tokenizer trained on the task's texts, as large as they support.
  cfg.task.tokenizer, cfg.workdir = "task", str(tmp_path / "task_tokenizer")
  summary, stdout = capture(finetune.run, cfg)
  rate = float(stdout.split("Unknown tokens: ")[1].split("%")[0])
  assert rate < 5.0 and summary["test"]["accuracy"] > 0
  with open(tmp_path / "task_tokenizer" / "config.json") as f:
    assert json.load(f)["tokenizer"]["vocab_size"] == summary["vocab_size"] < 512


def test_a_killed_fine_tuning_run_resumes_to_identical_metrics(tmp_path, bbc_data_dir, monkeypatch):
  changes = {"train.num_steps": 60, "finetune.min_steps": 60, "train.eval_every": 20, "train.log_every": 10,
             "model.dropout_rate": 0.1, "finetune.patience": 2}  # dropout keys and keep-best state must resume
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  straight = finetune.run(toy_config(tmp_path / "a", bbc_data_dir, **changes))
  original = finetune.logger.MetricsLogger.train_progress

  class Killed(Exception):
    pass

  def die_at_step_50(self, step, metrics):
    if step == 50:
      raise Killed()
    original(self, step, metrics)

  cfg = toy_config(tmp_path / "b", bbc_data_dir, **changes)
  monkeypatch.setattr(finetune.logger.MetricsLogger, "train_progress", die_at_step_50)
  with pytest.raises(Killed):
    finetune.run(cfg)
  monkeypatch.undo()
  assert not os.path.exists(os.path.join(cfg.workdir, "metrics.json"))
  resumed = finetune.run(cfg)
  for key in ("best_step", "steps_run", "validation", "test"):
    assert resumed[key] == straight[key], key
  with pytest.raises(ConfigError, match="holds a finished fine-tuning run"):
    finetune.run(cfg)


def test_a_diverging_fine_tuning_run_stops_before_saving(tmp_path, bbc_data_dir):
  cfg = toy_config(tmp_path, bbc_data_dir, **{"optim.lr": 1e12, "optim.grad_clip": 0.0})
  with pytest.raises(Diverged, match="fine-tuning diverged: a loss or gradient norm became NaN or infinite"):
    finetune.run(cfg)
  run = tmp_path / "run"
  assert not os.listdir(run / "checkpoints") and not os.listdir(run / "resume" / "checkpoints")
  assert not (run / "metrics.json").exists()
