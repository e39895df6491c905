"""Tests of lmlab.models.recurrent (tiny LSTM / GRU models, CPU)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lmlab import config as config_lib
from lmlab.models.recurrent import (RecurrentConfig, RecurrentLM, RecurrentStep, flops_per_token,
                                    segment_ends, segment_starts)
from lmlab.models.transformer import param_count
from lmlab.train import optimizer, partitioning

V, L, B, D = 32, 12, 2, 16
CELLS = ("lstm", "gru")
BOTH = [(cell, bi) for cell in CELLS for bi in (False, True)]


def make(**kw):
  return RecurrentLM(RecurrentConfig(**{**dict(vocab_size=V, num_layers=2, d_model=D), **kw}))


def tokens(seed=0, shape=(B, L)):
  # numpy, not jax.random: every new shape would cost an XLA compile.
  return jnp.asarray(np.random.default_rng(seed).integers(1, V, shape), jnp.int32)


@functools.lru_cache(maxsize=None)
def jitted(model, method="apply", **kw):
  """One compiled function per (model config, method, flags); test time is dominated by XLA compiles.

  Keyed on the (hashable, compared by value) model, not on model.apply: bound methods of equal
  modules compare unequal, so every make() would compile again.
  """
  return jax.jit(functools.partial(getattr(model, method), **kw))


@functools.lru_cache(maxsize=None)
def init(model):
  """Unboxed params of a tiny model (the rbg PRNG compiles faster than threefry)."""
  return nn.meta.unbox(jitted(model, "init")(jax.random.key(0, impl="rbg"), tokens())["params"])


def forward(model, params, *args, **kw):
  return jitted(model, **kw)({"params": params}, *args)


def test_segment_starts_and_ends():
  seg = jnp.array([[1, 1, 2, 2, 2, 0], [1, 2, 3, 3, 0, 0]])
  np.testing.assert_array_equal(segment_starts(seg), [[1, 0, 1, 0, 0, 1], [1, 1, 1, 0, 1, 0]])
  np.testing.assert_array_equal(segment_ends(seg), [[0, 1, 0, 0, 1, 1], [1, 1, 0, 1, 0, 1]])


@pytest.mark.parametrize("cell,bidirectional", BOTH)
def test_shapes_and_dtypes(cell, bidirectional):
  model = make(cell=cell, bidirectional=bidirectional, dtype=jnp.bfloat16)
  variables = jax.eval_shape(model.init, jax.random.key(0), tokens())
  assert set(variables) == {"params"}
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.meta.unbox(variables)))
  logits = jax.eval_shape(model.apply, variables, tokens(), jnp.ones((B, L), jnp.int32))
  assert logits.shape == (B, L, V) and logits.dtype == jnp.float32


@pytest.mark.parametrize("cell", CELLS)
def test_step_matches_flax_reference_cell(cell):
  # Our step (input share of the gates precomputed outside the scan) computes flax's LSTM / GRU cell
  # (gates i, f, g, o and r, z, n) given the same weights.
  cfg = RecurrentConfig(vocab_size=V, cell=cell, d_model=D)
  rng = np.random.default_rng(0)
  x_BD, h_BD, c_BD = (jnp.asarray(rng.normal(size=(B, D)), jnp.float32) for _ in range(3))
  gates = ("i", "f", "g", "o") if cell == "lstm" else ("r", "z", "n")
  w_in = {g: rng.normal(size=(D, D)) / 4 for g in gates}
  w_h = {g: rng.normal(size=(D, D)) / 4 for g in gates}
  b = {g: rng.normal(size=D) for g in gates}
  xg_BG = jnp.asarray(x_BD @ np.concatenate([w_in[g] for g in gates], 1) + np.concatenate([b[g] for g in gates]),
                      jnp.float32)
  if cell == "lstm":
    ours = {"recurrent": {"kernel": np.concatenate([w_h[g] for g in gates], 1)}}
    ref = nn.OptimizedLSTMCell(D)
    ref_params = {f"i{g}": {"kernel": w_in[g]} for g in gates} | {f"h{g}": {"kernel": w_h[g], "bias": b[g]} for g in gates}
    carry = (c_BD, h_BD)
  else:
    # flax's GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); our bias of n's recurrent share is b_hn.
    ours = {"recurrent": {"kernel": np.concatenate([w_h[g] for g in gates], 1), "bias": np.zeros(3 * D)}}
    ref = nn.GRUCell(D)
    ref_params = {f"i{g}": {"kernel": w_in[g], "bias": b[g]} for g in gates} | {f"h{g}": {"kernel": w_h[g]} for g in gates}
    ref_params["hn"]["bias"] = np.zeros(D)
    carry = h_BD
  reset_B = jnp.zeros(B, bool)
  (carry_ours, out_ours) = RecurrentStep(cfg).apply({"params": ours}, carry, (xg_BG, reset_B))
  (carry_ref, out_ref) = ref.apply({"params": ref_params}, carry, x_BD)
  np.testing.assert_allclose(out_ours, out_ref, atol=1e-5)
  for a, r in zip(jax.tree_util.tree_leaves(carry_ours), jax.tree_util.tree_leaves(carry_ref)):
    np.testing.assert_allclose(a, r, atol=1e-5)
  # A reset row starts from the zero state.
  _, out_reset = RecurrentStep(cfg).apply({"params": ours}, carry, (xg_BG, jnp.ones(B, bool)))
  zero = jax.tree_util.tree_map(jnp.zeros_like, carry)
  np.testing.assert_allclose(out_reset, ref.apply({"params": ref_params}, zero, x_BD)[1], atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_forget_gate_bias_starts_at_one(cell):
  params = init(make(cell=cell, bidirectional=True))
  for direction in ("fwd", "bwd"):
    bias = np.asarray(params["layer_0"][direction]["input"]["bias"])
    if cell == "lstm":  # gates [i | f | g | o]: only f starts at 1 (Jozefowicz et al. 2015)
      np.testing.assert_array_equal(bias, np.repeat([0.0, 1.0, 0.0, 0.0], D))
    else:
      np.testing.assert_array_equal(bias, np.zeros(3 * D))
    kernel = np.asarray(params["layer_0"][direction]["step"]["recurrent"]["kernel"])
    for block in np.split(kernel, bias.size // D, axis=1):  # each gate's recurrence starts orthogonal
      np.testing.assert_allclose(block.T @ block, np.eye(D), atol=1e-5)


def test_bfloat16_forward_runs_close_to_float32():
  model32 = make(cell="gru", bidirectional=True)
  params = init(model32)
  out32 = forward(model32, params, tokens())
  out16 = forward(make(cell="gru", bidirectional=True, dtype=jnp.bfloat16), params, tokens())
  assert out16.dtype == jnp.float32 and np.isfinite(out16).all()
  np.testing.assert_allclose(out16, out32, atol=0.05)


@pytest.mark.parametrize("cell", CELLS)
def test_unidirectional_is_causal(cell):
  model = make(cell=cell)
  params, x = init(model), tokens()
  t = 6
  a, b = forward(model, params, x), forward(model, params, x.at[:, t].set((x[:, t] + 1) % V))
  np.testing.assert_array_equal(a[:, :t], b[:, :t])
  assert not np.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_sees_the_future_within_its_segment_only(cell):
  model = make(cell=cell, bidirectional=True)
  params, x = init(model), tokens()
  seg = jnp.array([[1] * 6 + [2] * 6] * B)
  change = lambda t: forward(model, params, x.at[:, t].set((x[:, t] + 1) % V), seg)
  ref = forward(model, params, x, seg)
  # A later token of segment 1 reaches every earlier position of segment 1...
  assert not np.isclose(change(5)[:, :5], ref[:, :5]).all(axis=-1).any()
  # ...but a token of segment 2 reaches no position of segment 1, and none of segment 2 reaches back.
  np.testing.assert_array_equal(change(6)[:, :6], ref[:, :6])
  np.testing.assert_array_equal(change(5)[:, 6:], ref[:, 6:])


@pytest.mark.parametrize("cell,bidirectional", BOTH)
def test_state_resets_at_segment_boundaries(cell, bidirectional):
  model = make(cell=cell, bidirectional=bidirectional)
  params = init(model)
  seg2 = jnp.tile(tokens(1, (1, 5)), (B, 1))
  # Two packed rows: 4 tokens of segment 1 (different in each row), the same 5 tokens of segment 2,
  # then 3 of padding (segment 0).
  rows = jnp.concatenate([tokens(2, (B, 4)), seg2, jnp.zeros((B, 3), jnp.int32)], 1)
  segment_ids = jnp.array([[1] * 4 + [2] * 5 + [0] * 3] * B)
  # Segment 2 alone at the start of a row, then padding.
  alone = forward(model, params, jnp.pad(seg2, ((0, 0), (0, L - 5))),
                  jnp.array([[1] * 5 + [0] * (L - 5)] * B))[:, :5]
  out = forward(model, params, rows, segment_ids)
  np.testing.assert_allclose(out[:, 4:9], alone, atol=1e-5)
  assert not np.allclose(out[0, :4], out[1, :4])


@pytest.mark.parametrize("cell,bidirectional", BOTH)
def test_padding_does_not_change_real_positions(cell, bidirectional):
  model = make(cell=cell, bidirectional=bidirectional)
  params, x = init(model), tokens()
  segment_ids = jnp.array([[1] * 8 + [0] * 4, [1] * 3 + [2] * 3 + [0] * 6])
  real = np.asarray(segment_ids) > 0
  other_pad = jnp.where(segment_ids > 0, x, tokens(3))
  a, b = forward(model, params, x, segment_ids), forward(model, params, other_pad, segment_ids)
  np.testing.assert_allclose(a[real], b[real], atol=1e-6)
  assert not np.allclose(a[~real], b[~real])  # the padding positions did see different tokens


# The mesh axis each logical name maps to (None: replicated).
MESH_AXIS = dict(partitioning.LOGICAL_RULES)
# First matching suffix wins: gate kernels read an embed-wide input and write gate units.
EXPECTED_NAMES = (("embed/embedding", ("vocab", "embed")), ("unembed", ("embed", "vocab")),
                  ("combine/kernel", ("mlp", "embed")), ("combine/bias", ("embed",)),
                  ("kernel", ("embed", "mlp")), ("bias", ("mlp",)))


@pytest.mark.parametrize("cell,bidirectional,tie", [("lstm", True, False), ("gru", True, True),
                                                    ("gru", False, False)])
def test_every_param_is_logically_partitioned(cell, bidirectional, tie):
  model = make(cell=cell, bidirectional=bidirectional, tie_embeddings=tie)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens())["params"]
  decays = dict(jax.tree_util.tree_leaves_with_path(optimizer.decay_mask(params)))
  leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  names = {"/".join(k.key for k in path) for path, _ in leaves}
  assert any(n.startswith("layer_1/bwd/") for n in names) == bidirectional
  assert ("unembed" in names) == (not tie)
  for path, leaf in leaves:
    name = "/".join(k.key for k in path)
    assert isinstance(leaf, nn.Partitioned), name
    assert len(leaf.names) == leaf.value.ndim, name
    assert leaf.names == next(v for k, v in EXPECTED_NAMES if name.endswith(k)), name
    # No two names of one param on the same mesh axis (sharding would be rejected).
    mesh_axes = [MESH_AXIS[n] for n in leaf.names if n is not None and MESH_AXIS[n] is not None]
    assert len(mesh_axes) == len(set(mesh_axes)), name
    # Weight decay on gate, recurrent and combine kernels only; not on biases or the embedding tables.
    assert decays[path] == name.endswith("kernel"), name


def test_sharded_forward_matches_unsharded():
  # The trainer's path: params sharded by the logical rules on a (data, fsdp, tensor) = (1, 2, 4) mesh.
  model = make(bidirectional=True)
  mesh = partitioning.make_mesh((1, 2, 4))
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens())["params"]
  params = jax.device_put(init(model), partitioning.state_shardings(boxed, mesh))
  assert params["layer_0"]["fwd"]["input"]["kernel"].sharding.spec == P("fsdp", "tensor")
  out = forward(model, params, jax.device_put(tokens(), partitioning.batch_sharding(mesh)))
  np.testing.assert_allclose(out, forward(model, init(model), tokens()), atol=1e-5)


def test_jit_with_unboxed_params_matches_boxed_apply():
  model = make(cell="gru")
  boxed = model.init(jax.random.key(0, impl="rbg"), tokens())["params"]
  unboxed = nn.meta.unbox(boxed)
  assert not any(isinstance(x, nn.Partitioned) for x in jax.tree_util.tree_leaves(
      unboxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
  np.testing.assert_allclose(forward(model, unboxed, tokens()), model.apply({"params": boxed}, tokens()),
                             atol=1e-6)


def test_dropout_only_when_training():
  model = make(dropout_rate=0.5, bidirectional=True)
  params, x = init(make(bidirectional=True)), tokens()  # dropout has no params
  np.testing.assert_array_equal(forward(model, params, x), forward(make(bidirectional=True), params, x))
  train = lambda seed: jitted(model, deterministic=False)(
      {"params": params}, x, rngs={"dropout": jax.random.key(seed)})
  assert not np.allclose(train(0), train(1))
  # With rate 0 training needs no dropout rng (tracing would fail without one).
  jax.eval_shape(functools.partial(make().apply, deterministic=False), {"params": init(make())}, x)


def test_param_count_and_flops_by_hand():
  shapes = lambda model: jax.eval_shape(model.init, jax.random.key(0), tokens())["params"]
  # LSTM layer: 4 gates x (input kernel D*D + recurrent kernel D*D + bias D); embedding V*D.
  lstm = 4 * (2 * D * D + D)
  assert param_count(shapes(make())) == 2 * lstm + V * D
  assert flops_per_token(make().config, shapes(make())) == 6 * (2 * lstm + V * D)
  # GRU layer: 3 gates x (2 D*D + an input and a recurrent bias, as PyTorch / cuDNN); untied output;
  # bidirectional: two directions + a 2D -> D combine with bias.
  gru = 3 * (2 * D * D + 2 * D)
  model = make(cell="gru", bidirectional=True, tie_embeddings=False)
  n = 2 * (2 * gru + 2 * D * D + D) + V * D  # the input embedding is a lookup
  assert param_count(shapes(model)) == n + V * D
  assert flops_per_token(model.config, shapes(model)) == 6 * n


def test_from_config():
  cfg = config_lib.default_config()
  cfg.model.update(family="rnn", rnn_cell="gru", num_layers=3, d_model=64, dropout_rate=0.1,
                   tie_embeddings=False, dtype="bfloat16")
  expected = RecurrentConfig(vocab_size=100, cell="gru", num_layers=3, d_model=64, dropout_rate=0.1,
                             tie_embeddings=False, bidirectional=False, dtype=jnp.bfloat16)
  assert RecurrentConfig.from_config(cfg.model, vocab_size=100, max_len=64) == expected
  # bidirectional is derived from the objective, or read from cfg.model when it has the key.
  bi = dataclasses.replace(expected, bidirectional=True)
  assert RecurrentConfig.from_config(cfg.model, 100, bidirectional=True) == bi
  model_cfg = ml_collections.ConfigDict({**cfg.model.to_dict(), "bidirectional": True})
  rc = RecurrentConfig.from_config(model_cfg, 100)
  assert rc == bi and hash(rc) == hash(RecurrentConfig.from_config(model_cfg, 100))  # a jit static arg


@pytest.mark.parametrize("cell", CELLS)
def test_overfits_one_batch(cell, overfit):
  model = make(cell=cell, d_model=32)
  assert overfit(model, init(model), tokens(5, (4, 16)), 100) < 0.5


@pytest.mark.parametrize("cell", CELLS)
def test_decoding_carries_the_state_and_matches_rereading_the_row(cell):
  """Greedy decoding steps each layer's carried state one token at a time: the same tokens as picking
  the argmax of a full forward pass over the row so far, for left-padded prompts of different lengths;
  beam search with one beam is greedy decoding."""
  from lmlab.decode import sampling

  model = make(cell=cell)
  params = init(model)
  prompts, new = [[5, 9, 3, 7, 2], [11, 4]], 6
  greedy = sampling.sample(model, params, prompts, max_new_tokens=new, rng=jax.random.PRNGKey(0), temperature=0.0)
  for prompt, out in zip(prompts, greedy):
    row = list(prompt)
    for _ in range(new):
      row.append(int(jnp.argmax(model.apply({"params": params}, jnp.asarray([row], jnp.int32))[0, -1])))
    assert out == row[len(prompt):]
  beams, _ = sampling.beam_search(model, params, prompts, max_new_tokens=new, eos_id=V + 1, beam_size=1)
  assert beams == greedy
  with pytest.raises(ValueError, match="no decoding state"):
    model_bi = make(cell=cell, bidirectional=True)
    model_bi.apply({"params": init(model_bi)}, tokens(), return_carries=True)
