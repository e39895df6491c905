"""Train step, sharding, gradient accumulation, weight-decay mask and checkpoints."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lmlab import config as config_lib
from lmlab.objectives import causal
from lmlab.train import checkpoint, optimizer, partitioning, trainer


def tiny_config(**model):
  cfg = config_lib.default_config()
  cfg.model.num_layers, cfg.model.d_model, cfg.model.num_heads, cfg.model.mlp_dim = 2, 32, 2, 64
  for key, value in model.items():
    cfg.model[key] = value
  cfg.data.seq_len, cfg.data.batch_size = 16, 8
  cfg.tokenizer.vocab_size = 64
  cfg.optim.warmup_steps, cfg.train.num_steps = 2, 10
  return cfg


def packed_batch(cfg, seed=0):
  """Rows holding two documents each and some padding, like the packer's output."""
  rng = np.random.default_rng(seed)
  b, l = cfg.data.batch_size, cfg.data.seq_len
  tokens = rng.integers(4, cfg.tokenizer.vocab_size, (b, l)).astype(np.int32)
  segment_ids = np.where(np.arange(l) < l // 2, 1, 2).astype(np.int32) * np.ones((b, 1), np.int32)
  segment_ids[:, -3:] = 0
  tokens[segment_ids == 0] = 0
  positions = np.where(segment_ids == 1, np.arange(l), np.arange(l) - l // 2).astype(np.int32)
  positions[segment_ids == 0] = 0
  return causal.causal_lm({"tokens": tokens, "segment_ids": segment_ids, "positions": positions}, None)


def mesh_of(shape):
  n = int(np.prod(shape))
  return partitioning.make_mesh(shape, jax.devices()[:n])


def run_steps(cfg, mesh, steps=2):
  trn = trainer.Trainer(cfg, cfg.tokenizer.vocab_size, mesh)
  state = trn.init_state(jax.random.PRNGKey(0))
  losses = []
  for i in range(steps):
    state, metrics = trn.train_step(state, partitioning.global_batch(packed_batch(cfg, i), mesh))
    losses.append(float(metrics["loss"]))
  return trn, state, losses


def test_causal_targets_stay_inside_documents():
  tokens = jnp.array([[5, 6, 7, 8, 9, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  targets, weights = causal.next_token_targets(tokens, segments)
  np.testing.assert_array_equal(targets[0, :4], [6, 7, 8, 9])
  np.testing.assert_array_equal(weights[0], [1, 1, 0, 1, 0, 0])


@pytest.mark.parametrize("model", [{}, {"scan_layers": True, "positions": "rotary"}])
def test_sharded_step_matches_single_device(model):
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  cfg = tiny_config(**model)
  _, state1, losses1 = run_steps(cfg, mesh_of((1, 1, 1)))
  trn8, state8, losses8 = run_steps(cfg, mesh_of((2, 2, 2)))
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  # Parameters really are split over fsdp and tensor, and end up equal to the single-device ones.
  kernel = state8.params["block_0" if not cfg.model.scan_layers else "blocks"]["mlp"]["wi"]["kernel"]
  assert kernel.sharding.spec[-2:] == ("fsdp", "tensor")
  assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.size == kernel.size // 4
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
                         jax.device_get(state8.params), jax.device_get(state1.params))


def test_bfloat16_training_follows_float32():
  """model.dtype=bfloat16 through the real train step (bf16 matmuls with float32 logits, attention scores
  and parameters), on the accelerator presets' scanned, rematerialized stack: it compiles and runs on
  XLA's CPU runtime, keeps float32 parameters, and fits one batch as float32 does."""
  cfg = tiny_config(scan_layers=True, remat="dots", positions="rotary")
  cfg.optim.lr, cfg.optim.warmup_steps = 1e-2, 0
  mesh = mesh_of((1, 1, 1))
  batch = partitioning.global_batch(packed_batch(cfg), mesh)
  losses = {}
  for dtype in ("float32", "bfloat16"):
    cfg.model.dtype = dtype
    trn = trainer.Trainer(cfg, cfg.tokenizer.vocab_size, mesh)
    state, losses[dtype] = trn.init_state(jax.random.PRNGKey(0)), []
    for _ in range(6):
      state, metrics = trn.train_step(state, batch)
      losses[dtype].append(float(metrics["loss"]))
  assert {a.dtype for a in jax.tree_util.tree_leaves(state.params)} == {jnp.dtype(jnp.float32)}
  assert losses["float32"][-1] < losses["float32"][0] - 0.5  # the batch is being learned
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=1e-2)


def test_gradient_accumulation_matches_full_batch():
  cfg = tiny_config()
  _, full, losses_full = run_steps(cfg, mesh_of((1, 1, 1)))
  cfg.optim.grad_accum_steps = 4
  _, accum, losses_accum = run_steps(cfg, mesh_of((1, 1, 1)))
  np.testing.assert_allclose(losses_accum, losses_full, rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         jax.device_get(accum.params), jax.device_get(full.params))


def test_weight_decay_only_on_matrices():
  cfg = tiny_config(tie_embeddings=False)
  trn = trainer.Trainer(cfg, cfg.tokenizer.vocab_size, mesh_of((1, 1, 1)))
  mask = optimizer.decay_mask(jax.eval_shape(trn._init_params, jax.random.PRNGKey(0)))
  flat = {"/".join(str(k.key) for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat["block_0/mlp/wi/kernel"] and flat["block_0/attn/qkv/kernel"] and flat["block_0/attn/out/kernel"]
  assert not flat["embed/embedding"] and not flat["pos_embed"] and not flat["unembed"]
  assert not any(v for k, v in flat.items() if "ln_" in k or k.endswith("bias"))
  # BERT's token-type embedding is an embedding table too (it was decayed once: its names are (None, embed)).
  cfg.model.family, cfg.objective.name = "encoder", "mlm_nsp"
  trn = trainer.Trainer(cfg, cfg.tokenizer.vocab_size, mesh_of((1, 1, 1)))
  mask = optimizer.decay_mask(jax.eval_shape(trn._init_params, jax.random.PRNGKey(0)))
  flat = {"/".join(str(k.key) for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert not flat["token_type_embed/embedding"] and not flat["embed/embedding"] and flat["pooler/kernel"]


def test_learning_rate_warms_up_then_decays():
  cfg = tiny_config()
  schedule = optimizer.learning_rate_schedule(cfg.optim, cfg.train.num_steps)
  lrs = [float(schedule(s)) for s in range(cfg.train.num_steps + 1)]
  assert lrs[0] == 0 and lrs[2] == pytest.approx(cfg.optim.lr)
  assert lrs[-1] == pytest.approx(cfg.optim.lr * cfg.optim.final_lr_fraction)
  assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_checkpoint_restores_onto_another_mesh_and_detects_damage(tmp_path):
  cfg = tiny_config()
  trn8, state8, _ = run_steps(cfg, mesh_of((2, 2, 2)))
  manager = checkpoint.make_manager(str(tmp_path), keep=2)
  checkpoint.save(manager, state8, {"name": "t"})
  manager.wait_until_finished()

  trn1 = trainer.Trainer(cfg, cfg.tokenizer.vocab_size, mesh_of((1, 1, 1)))
  restored, record = checkpoint.restore(manager, trn1.abstract_state)
  assert record["step"] == 2 and int(restored.step) == 2
  assert restored.params["embed"]["embedding"].sharding.num_devices == 1
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state8))

  # A finished checkpoint whose array files were swapped for another state's (same tree, other values):
  # orbax restores it without complaint; the fingerprint must refuse it.
  other = jax.tree_util.tree_map(lambda x: x + 1, state8)
  other_manager = checkpoint.make_manager(str(tmp_path / "other"), keep=2)
  other_manager.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(other),
                                                record=ocp.args.JsonSave({})))
  other_manager.wait_until_finished()
  other_manager.close()
  manager.close()
  shutil.rmtree(tmp_path / "checkpoints" / "2" / "state")
  shutil.copytree(tmp_path / "other" / "checkpoints" / "2" / "state", tmp_path / "checkpoints" / "2" / "state")
  reopened = checkpoint.make_manager(str(tmp_path), keep=2)
  with pytest.raises(checkpoint.CheckpointError, match="checkpoints/2 is damaged"):
    checkpoint.restore(reopened, trn1.abstract_state)
  reopened.close()


def test_file_checksums_are_written_after_the_save_and_catch_a_changed_byte(tmp_path):
  cfg = tiny_config()
  trn, state, _ = run_steps(cfg, mesh_of((1, 1, 1)))
  manager = checkpoint.make_manager(str(tmp_path), keep=2)
  checkpoint.save(manager, state, {"name": "t"})
  checkpoint.finish(manager)
  checksums = tmp_path / "checkpoint_checksums" / "2.json"
  assert checksums.exists() and len(json.loads(checksums.read_text())) > 3
  reopened = checkpoint.make_manager(str(tmp_path), keep=2)
  checkpoint.restore(reopened, trn.abstract_state)  # intact: restores
  # One byte of the record (not of the arrays: the fingerprint cannot see it) changes on disk.
  record = next(p for p in (tmp_path / "checkpoints" / "2").rglob("*") if p.is_file() and "record" in str(p))
  data = bytearray(record.read_bytes())
  data[-2] ^= 0x01
  record.write_bytes(bytes(data))
  with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/2 is damaged: 1 of its files differ"):
    checkpoint.restore(reopened, trn.abstract_state)
  reopened.close()
