"""Tests of lmlab.models.transformer and lmlab.decode.sampling (tiny shapes, CPU)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab import config as config_lib
from lmlab.decode.sampling import filter_logits, sample
from lmlab.models.transformer import (Transformer, TransformerConfig, flops_per_token, init_cache,
                                     param_count)

V, L, B = 32, 12, 2
POSITIONS = ("learned", "sinusoidal", "rotary")


def make(**kw):
  base = dict(vocab_size=V, num_layers=2, d_model=16, num_heads=2, mlp_dim=32, max_len=16)
  return Transformer(TransformerConfig(**{**base, **kw}))


def tokens(seed=0, shape=(B, L)):
  # numpy, not jax.random: every new shape would cost an XLA compile.
  return jnp.asarray(np.random.default_rng(seed).integers(1, V, shape), jnp.int32)


def restack(params, num_layers=2):
  """Unrolled params (block_0, block_1, ..) -> the scanned layout (blocks with a leading layer axis)."""
  params = nn.meta.unbox(params)
  stacked = {k: v for k, v in params.items() if not k.startswith("block_")}
  layers = [params[f"block_{i}"] for i in range(num_layers)]
  stacked["blocks"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
  return stacked


@functools.lru_cache(maxsize=None)
def init(model):
  """Params of a tiny model; test time is dominated by XLA compiles, so they are kept down.

  Scanned models get the restacked params of their unrolled twin (one init compile for both, and
  identical weights); init is jitted with the rbg PRNG, which compiles ~2x faster than threefry.
  """
  if model.config.scan_layers:
    unrolled = Transformer(dataclasses.replace(model.config, scan_layers=False, remat="none"))
    return restack(init(unrolled), model.config.num_layers)
  return jitted(model.init)(jax.random.key(0, impl="rbg"), tokens())["params"]


@functools.lru_cache(maxsize=None)
def jitted(fn, **kw):
  """One compiled function per (model method, flags); recompiling per call would dominate test time."""
  return jax.jit(functools.partial(fn, **kw))


def forward(model, params, *args, **kw):
  return jitted(model.apply, **kw)({"params": params}, *args)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_shapes_and_dtypes(positions, norm, mlp):
  model = make(positions=positions, norm=norm, mlp_activation=mlp, dtype=jnp.bfloat16, num_layers=1)
  variables = jax.eval_shape(model.init, jax.random.key(0), tokens())
  assert set(variables) == {"params"}
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.meta.unbox(variables)))
  logits = jax.eval_shape(model.apply, variables, tokens())
  assert logits.shape == (B, L, V) and logits.dtype == jnp.float32


def test_bfloat16_forward_runs_close_to_float32():
  model32 = make()
  params = init(model32)
  out32 = forward(model32, params, tokens())
  out16 = forward(make(dtype=jnp.bfloat16), params, tokens())
  assert out16.dtype == jnp.float32 and np.isfinite(out16).all()
  np.testing.assert_allclose(out16, out32, atol=0.1)


@pytest.mark.parametrize("positions", POSITIONS)
def test_causal(positions):
  model = make(positions=positions)
  params = init(model)
  x = tokens()
  t = 6
  y = x.at[:, t].set((x[:, t] + 1) % V)
  a, b = forward(model, params, x), forward(model, params, y)
  np.testing.assert_array_equal(a[:, :t], b[:, :t])
  assert not np.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("positions", POSITIONS)
def test_segments_are_isolated(positions):
  model = make(positions=positions)
  params = init(model)
  seg2 = tokens(1, (1, 5))
  # Two packed rows: 4 tokens of segment 1 (different in each row), the same 5 tokens of segment 2,
  # then 3 of padding (segment 0).
  rows = jnp.concatenate([tokens(2, (2, 4)), jnp.tile(seg2, (2, 1)), jnp.zeros((2, 3), jnp.int32)], 1)
  segment_ids = jnp.array([[1] * 4 + [2] * 5 + [0] * 3] * 2)
  explicit = jnp.array([list(range(4)) + list(range(5)) + list(range(3))] * 2)
  # Segment 2 alone, positions 0..4; right padding cannot change it (causality).
  alone = forward(model, params, jnp.pad(jnp.tile(seg2, (2, 1)), ((0, 0), (0, L - 5))))[:, :5]
  for positions_BL in (None, explicit):  # None: derived from the segment ids
    out = forward(model, params, rows, segment_ids, positions_BL)
    np.testing.assert_allclose(out[:, 4:9], alone, atol=1e-5)
    assert not np.allclose(out[0, :4], out[1, :4])


def decode_one_by_one(model, params, x, chunk):
  cache = init_cache(model, x.shape[0], 16)
  step = jitted(model.apply, decode=True, mutable="cache")
  outs, start = [], 0
  for size in [chunk] + [1] * (x.shape[1] - chunk):
    logits, mutated = step({"params": params, "cache": cache}, x[:, start:start + size])
    cache, start = mutated["cache"], start + size
    outs.append(logits)
  assert int(cache["index"]) == x.shape[1]
  return jnp.concatenate(outs, axis=1)


# chunk > 1: the first call feeds a whole prompt chunk, then single tokens follow.
@pytest.mark.parametrize("positions,scan,chunk", [("rotary", False, 1), ("learned", False, 5),
                                                  ("rotary", True, 5), ("learned", True, 1)])
def test_kv_cache_matches_full_forward(positions, scan, chunk):
  model = make(positions=positions, scan_layers=scan)
  params, x = init(model), tokens()
  np.testing.assert_allclose(decode_one_by_one(model, params, x, chunk), forward(model, params, x),
                             atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_cache_from_init(scan):
  model = make(scan_layers=scan)
  cache = jax.eval_shape(functools.partial(model.init, decode=True), jax.random.key(0),
                         jnp.zeros((3, 16), jnp.int32))["cache"]
  prefix = (2,) if scan else ()
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    name = jax.tree_util.keystr(path)
    assert leaf.shape == (() if "index" in name else (3,) if "offset" in name else prefix + (3, 16, 2, 8)), name
  assert jax.tree_util.tree_structure(cache) == jax.tree_util.tree_structure(init_cache(model, 3, 16))


def test_fused_attention_equals_explicit():
  """jax.nn.dot_product_attention (the GPU path; XLA's implementation on CPU) computes today's attention:
  packed segments, a bidirectional prefix, T5's relative position bias, and the KV-cache decode."""
  explicit, fused = make(attention="explicit", positions="relative"), make(attention="fused", positions="relative")
  params, x = init(explicit), tokens()
  segments = jnp.asarray([[1] * 5 + [2] * 7, [1] * 12], jnp.int32)
  prefix = jnp.asarray([[1] * 3 + [0] * 9, [1] * 6 + [0] * 6], jnp.int32)
  run = lambda model: jax.jit(model.apply)({"params": params}, x, segments, prefix_BL=prefix)
  np.testing.assert_allclose(run(fused), run(explicit), atol=1e-5)
  np.testing.assert_allclose(decode_one_by_one(fused, params, x, 5), forward(explicit, params, x), atol=1e-5)


def test_scan_equals_unrolled_with_restacked_params():
  unrolled, scanned = make(positions="rotary"), make(positions="rotary", scan_layers=True)
  params, stacked = init(unrolled), restack(init(unrolled))
  # The scanned model's own init has the same tree, shapes and partitioning names (+ 'layers').
  own = jax.eval_shape(scanned.init, jax.random.key(0), tokens())["params"]
  assert jax.tree_util.tree_map(jnp.shape, stacked) == jax.tree_util.tree_map(jnp.shape,
                                                                               nn.meta.unbox(own))
  assert param_count(params) == param_count(own)
  np.testing.assert_allclose(forward(scanned, stacked, tokens()), forward(unrolled, params, tokens()),
                             atol=1e-5)


def test_remat_keeps_outputs_and_grads():
  # Scan + full remat is exercised by test_overfits_one_batch.
  x = tokens()
  def loss_and_grad(model, params):
    loss = lambda p: jnp.mean(model.apply({"params": p}, x) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)
  params = init(make())
  ref_loss, ref_grad = loss_and_grad(make(), params)
  loss, grad = loss_and_grad(make(remat="dots"), params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grad, ref_grad)


EXPECTED_NAMES = {
    "embed/embedding": ("vocab", "embed"), "pos_embed": (None, "embed"), "unembed": ("embed", "vocab"),
    "qkv/kernel": ("embed", None, "heads", "head_dim"), "qkv/bias": (None, "heads", "head_dim"),
    "out/kernel": ("heads", "head_dim", "embed"), "out/bias": ("embed",),
    "wi/kernel": ("embed", "mlp"), "wi_0/kernel": ("embed", "mlp"), "wi_1/kernel": ("embed", "mlp"),
    "wi/bias": ("mlp",), "wi_0/bias": ("mlp",), "wi_1/bias": ("mlp",),
    "wo/kernel": ("mlp", "embed"), "wo/bias": ("embed",), "scale": ("embed",), "bias": ("embed",),
}


@pytest.mark.parametrize("kw", [dict(tie_embeddings=False, mlp_activation="swiglu"),
                                dict(scan_layers=True, norm="rmsnorm")])
def test_every_param_is_logically_partitioned(kw):
  model = make(**kw)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens())["params"]
  leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for path, leaf in leaves:
    name = "/".join(k.key for k in path)
    assert isinstance(leaf, nn.Partitioned), name
    expected = next(v for k, v in EXPECTED_NAMES.items() if name.endswith(k))
    if kw.get("scan_layers") and name.startswith("blocks/"):
      expected = ("layers",) + expected
    assert leaf.names == expected, name
    assert len(leaf.names) == leaf.value.ndim, name


def test_param_count_and_flops_by_hand():
  # Per block: qkv 16*48+48, out 16*16+16, two layernorms 2*32, mlp 16*32+32 + 32*16+16 = 2224.
  # Plus embedding 32*16, learned positions 16*16, final norm 32.
  shapes = lambda model: jax.eval_shape(model.init, jax.random.key(0), tokens())["params"]
  tied, untied = make(), make(tie_embeddings=False)
  n_total = 2 * 2224 + 512 + 256 + 32
  assert param_count(shapes(tied)) == param_count(init(tied)) == n_total
  # The tied table counts once (as the output projection); learned positions are a lookup.
  n = n_total - 256
  assert flops_per_token(tied.config, 8, shapes(tied)) == 6 * n + 12 * 2 * 16 * 8
  assert param_count(shapes(untied)) == n_total + 512
  assert flops_per_token(untied.config, 8, shapes(untied)) == 6 * n + 12 * 2 * 16 * 8


def test_from_config():
  cfg = config_lib.default_config()
  cfg.model.dtype = "bfloat16"
  tc = TransformerConfig.from_config(cfg.model, vocab_size=100, max_len=64)
  assert (tc.vocab_size, tc.max_len, tc.dtype, tc.d_model) == (100, 64, jnp.bfloat16, cfg.model.d_model)
  derived = {"vocab_size", "max_len", "causal", "num_token_types", "mlm_head", "nsp_head"}
  assert {f.name for f in dataclasses.fields(tc)} - derived <= set(cfg.model)
  encoder = TransformerConfig.from_config(cfg.model, 100, 64, causal=False, nsp_head=True)
  assert not encoder.causal and encoder.nsp_head and encoder.d_model == cfg.model.d_model


def test_dropout_only_when_training():
  model = make(dropout_rate=0.5)
  params, x = init(make()), tokens()  # dropout has no params
  np.testing.assert_array_equal(forward(model, params, x), forward(make(), params, x))
  train = lambda seed: jitted(model.apply, deterministic=False)(
      {"params": params}, x, rngs={"dropout": jax.random.key(seed)})
  assert not np.allclose(train(0), train(1))
  # With rate 0 training needs no dropout rng (tracing would fail without one).
  jax.eval_shape(functools.partial(make().apply, deterministic=False), {"params": params}, x)


def test_filter_logits():
  logits = jnp.log(jnp.array([[0.1, 0.4, 0.05, 0.3, 0.15]]))
  kept = lambda out: set(np.flatnonzero(np.isfinite(out[0])).tolist())
  assert kept(filter_logits(logits, top_k=2)) == {1, 3}
  assert kept(filter_logits(logits, top_p=0.6)) == {1, 3}  # 0.4 < 0.6 <= 0.4 + 0.3
  assert kept(filter_logits(logits, top_p=0.75)) == {1, 3, 4}
  assert kept(filter_logits(logits, top_p=0.01)) == {1}
  assert kept(filter_logits(logits, top_k=3, top_p=0.5)) == {1, 3}
  assert kept(filter_logits(logits)) == set(range(5))
  np.testing.assert_array_equal(filter_logits(logits, top_k=2)[0, [1, 3]], logits[0, [1, 3]])


PROMPTS = [[5, 7, 9], [3], [11, 2, 4, 6, 8]]


@pytest.mark.parametrize("scan", [False, True])
def test_greedy_sample_matches_argmax_with_full_forward(scan):
  model = make(positions="rotary", scan_layers=scan)
  params = init(model)
  got = sample(model, params, PROMPTS, max_new_tokens=6, rng=jax.random.key(0), temperature=0.0)
  for prompt, generated in zip(PROMPTS, got):
    # Full forward passes over a fixed [1, 16] buffer (one compile); causality makes the padding inert.
    buf = np.zeros((1, 16), np.int32)
    buf[0, :len(prompt)] = prompt
    for t in range(len(prompt), len(prompt) + 6):
      buf[0, t] = int(jnp.argmax(forward(model, params, jnp.asarray(buf))[0, t - 1]))
    assert generated == buf[0, len(prompt):len(prompt) + 6].tolist()


def test_sampling_reproducible_and_eos():
  model = make()
  params = init(model)
  run = lambda seed, **kw: sample(model, params, PROMPTS, max_new_tokens=10, rng=jax.random.key(seed),
                                  top_k=20, top_p=0.95, temperature=2.0, **kw)
  a = run(0)
  assert a == run(0) and a != run(1)
  assert all(len(g) == 10 and all(0 <= t < V for t in g) for g in a)
  eos = a[0][3]
  cut = run(0, eos_id=eos)
  for full, short in zip(a, cut):
    assert short == (full[:full.index(eos) + 1] if eos in full else full)
  first = a[0][0]  # the first token the seed samples; banned as EOS for the first 2 tokens:
  held = run(0, eos_id=first, min_new_tokens=2)
  assert all(first not in g[:2] for g in held) and held != run(0, eos_id=first)


def test_prompt_too_long_raises():
  model = make()
  with pytest.raises(ValueError, match="max_len"):
    sample(model, init(model), [[1] * 10], max_new_tokens=7, rng=jax.random.key(0))


def test_overfits_one_batch(overfit):
  model = make(positions="rotary", norm="rmsnorm", mlp_activation="swiglu", use_bias=False,
               scan_layers=True, remat="full")
  assert overfit(model, nn.meta.unbox(init(model)), tokens(5, (4, 16)), 200) < 0.1


def changed_positions(model, params, x, t, **kw):
  """Positions whose logits change when token t changes."""
  y = x.at[:, t].set((x[:, t] + 1) % V)
  a, b = forward(model, params, x, **kw), forward(model, params, y, **kw)
  return [i for i in range(x.shape[1]) if not np.allclose(a[:, i], b[:, i])]


def test_prefix_lm_is_bidirectional_over_the_prefix_only():
  model = make()
  params, x = init(model), tokens()
  segment_ids = jnp.array([[1] * 7 + [2] * 5] * B)
  # Segment 1: prefix 0..3, suffix 4..6; segment 2: prefix 7..8, suffix 9..11.
  prefix = jnp.array([[1] * 4 + [0] * 3 + [1] * 2 + [0] * 3] * B)
  fwd = jitted(model.apply)
  run = lambda x: fwd({"params": params}, x, segment_ids, prefix_BL=prefix)

  def changed(t):
    y = x.at[:, t].set((x[:, t] + 1) % V)
    return [i for i in range(L) if not np.allclose(run(x)[:, i], run(y)[:, i])]
  assert changed(2) == list(range(0, 7))  # a prefix token is seen by the whole prefix and the suffix
  assert changed(5) == [5, 6]  # a suffix token only by itself and later ones
  assert changed(8) == list(range(7, 12))  # never across the segment boundary
  # Without a prefix the model is causal.
  no_prefix = fwd({"params": params}, x, segment_ids, prefix_BL=jnp.zeros_like(prefix))
  np.testing.assert_allclose(no_prefix, forward(model, params, x, segment_ids), atol=1e-6)


def test_encoder_attends_both_ways_within_a_segment():
  model = make(causal=False)
  params, x = init(model), tokens()
  assert changed_positions(model, params, x, 6) == list(range(L))
  segment_ids = jnp.array([[1] * 5 + [2] * 7] * B)
  y = x.at[:, 8].set((x[:, 8] + 1) % V)
  a, b = forward(model, params, x, segment_ids), forward(model, params, y, segment_ids)
  np.testing.assert_array_equal(a[:, :5], b[:, :5])
  assert not np.allclose(a[:, 5:8], b[:, 5:8])


def test_bert_heads():
  model = make(causal=False, num_token_types=2, mlm_head=True, nsp_head=True)
  x = tokens()
  variables = jax.jit(model.init)(jax.random.key(0), x)
  assert {"token_type_embed", "mlm_dense", "mlm_norm", "output_bias", "pooler", "nsp"} <= set(variables["params"])
  types = jnp.array([[0] * 6 + [1] * 6] * B)
  apply = jax.jit(lambda v, x, t: model.apply(v, x, token_types_BL=t))
  logits, nsp = apply(variables, x, types)
  assert logits.shape == (B, L, V) and nsp.shape == (B, 2) and nsp.dtype == jnp.float32
  other_logits, _ = apply(variables, x, jnp.zeros_like(types))
  assert not np.allclose(logits, other_logits)  # token types are used


# T5's relative position bias, prompts as a prefix, beam search, attention dropout.


def test_relative_position_buckets_follow_t5():
  from lmlab.models.transformer import relative_position_bucket as bucket
  rel = jnp.array([0, -1, 1, -7, -8, -20, 20, -200, 200])  # key position - query position
  # Bidirectional, 32 buckets: 16 per direction, 8 exact; n = 20 -> 8 + int(log(20/8) / log(128/8) * 8) = 10.
  assert bucket(rel, True).tolist() == [0, 1, 17, 7, 8, 10, 26, 15, 31]
  # Causal: later keys (rel > 0) all in bucket 0; 16 exact; n = 20 -> 16 + int(log(20/16) / log(8) * 16) = 17.
  assert bucket(rel, False).tolist() == [0, 1, 0, 7, 8, 17, 0, 31, 0]
  assert bucket(jnp.array([-130, -127]), False, 32, 128).tolist() == [31, 31]
  assert bucket(jnp.array([-3, 3]), True, num_buckets=8, max_distance=16).tolist() == [2, 6]


def decode_left_padded(model, params, prompts, fed, prefix):
  """Logits of the prompts (left-padded, one forward through the cache) and then of `fed` tokens one at
  a time: [B, P + len(fed[0]), V]."""
  P = max(map(len, prompts))
  buf = np.zeros((len(prompts), P), np.int32)
  for row, p in zip(buf, prompts):
    row[P - len(p):] = p
  seg = jnp.asarray(buf != 0, jnp.int32)
  cache = init_cache(model, len(prompts), P + len(fed[0]))
  logits, mutated = jitted(model.apply, decode=True, mutable="cache")(
      {"params": params, "cache": cache}, jnp.asarray(buf), seg, prefix_BL=seg if prefix else None)
  outs = [logits]
  for t in range(len(fed[0])):
    cache = mutated["cache"]
    logits, mutated = jitted(model.apply, decode=True, mutable="cache")(
        {"params": params, "cache": cache}, jnp.asarray([[f[t]] for f in fed], jnp.int32))
    outs.append(logits)
  return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("positions,prefix", [("learned", False), ("rotary", True), ("relative", True)])
def test_left_padded_prompts_in_the_cache_match_the_full_forward(positions, prefix):
  """Prompts of different lengths in one forward pass (left padding masked, positions from each row's
  first token; a prefix LM's prompt bidirectional), then cached steps: each row's logits equal a full
  forward over its own prompt + tokens, with the prompt as the prefix."""
  model = make(positions=positions)
  params = init(model)
  prompts, fed = [[5, 7, 9, 4], [3, 8]], [[11, 12, 13], [14, 15, 16]]
  got = decode_left_padded(model, params, prompts, fed, prefix)
  P = 4
  for b, (prompt, more) in enumerate(zip(prompts, fed)):
    seq = np.zeros((1, 16), np.int32)
    seq[0, :len(prompt) + 3] = prompt + more
    prefix_BL = jnp.asarray(np.arange(16)[None] < len(prompt), jnp.int32) if prefix else None
    full = jitted(model.apply)({"params": params}, jnp.asarray(seq), prefix_BL=prefix_BL)[0, :len(prompt) + 3]
    np.testing.assert_allclose(got[b, P - len(prompt):], full, atol=1e-5)


def test_prefix_sampling_reads_the_prompt_as_the_prefix():
  model = make(positions="relative")
  params = init(model)
  prompts = [[5, 7, 9], [3], [11, 2, 4, 6, 8]]
  got = sample(model, params, prompts, max_new_tokens=5, rng=jax.random.key(0), temperature=0.0, prefix=True)
  for prompt, generated in zip(prompts, got):
    seq = np.zeros((1, 16), np.int32)
    seq[0, :len(prompt) + 5] = prompt + generated
    prefix_BL = jnp.asarray(np.arange(16)[None] < len(prompt), jnp.int32)
    logits = jitted(model.apply)({"params": params}, jnp.asarray(seq), prefix_BL=prefix_BL)[0]
    assert generated == [int(jnp.argmax(logits[t])) for t in range(len(prompt) - 1, len(prompt) + 4)]


def test_decoder_beam_search():
  from lmlab.decode.sampling import beam_search
  model = make(positions="relative")
  params = init(model)
  prompts = [[5, 7, 9], [3, 6]]
  greedy = sample(model, params, prompts, max_new_tokens=5, rng=jax.random.key(0), temperature=0.0, eos_id=3)
  wide, scores = beam_search(model, params, prompts, max_new_tokens=5, eos_id=3, beam_size=6)
  for prompt, out, score, g in zip(prompts, wide, scores, greedy):
    seq = jnp.asarray([prompt + out], jnp.int32)
    logp = jax.nn.log_softmax(forward(model, params, seq)[0])
    total = sum(float(logp[len(prompt) - 1 + i, tok]) for i, tok in enumerate(out))
    np.testing.assert_allclose(score, total, rtol=1e-4)  # alpha 0: the sequence's log-probability
    greedy_seq = jnp.asarray([prompt + g], jnp.int32)
    greedy_logp = jax.nn.log_softmax(forward(model, params, greedy_seq)[0])
    assert score >= sum(float(greedy_logp[len(prompt) - 1 + i, t]) for i, t in enumerate(g)) - 1e-4


def test_attention_dropout_is_seeded_and_off_at_evaluation():
  model = make(attention_dropout_rate=0.5)
  params, x = init(make()), tokens()
  train = lambda seed: jitted(model.apply, deterministic=False)({"params": params}, x,
                                                               rngs={"dropout": jax.random.key(seed)})
  np.testing.assert_allclose(train(1), train(1))
  assert not np.allclose(train(1), train(2))
  np.testing.assert_allclose(forward(model, params, x), forward(make(), params, x), atol=1e-6)
  # Only the probabilities are dropped: with every other dropout off, the embeddings are untouched.
  assert not np.allclose(train(1), forward(make(), params, x), atol=1e-3)
