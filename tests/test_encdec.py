"""The encoder-decoder: masking semantics, KV-cache decoding, sampling and beam search."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.decode import seq2seq
from lmlab.models import encdec
from lmlab.models.encdec import EncoderDecoder, init_decoder_cache
from lmlab.models.transformer import TransformerConfig

V, S, L, B = 32, 10, 8, 2
EOS = 3


def make(**kw):
  base = dict(vocab_size=V, num_layers=2, d_model=16, num_heads=2, mlp_dim=32, max_len=16)
  return EncoderDecoder(TransformerConfig(**{**base, **kw}))


def ids(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).integers(4, V, shape), jnp.int32)


@functools.lru_cache(maxsize=None)
def init(model):
  return nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), ids(0, (B, S)), ids(1, (B, L)))["params"])


@functools.lru_cache(maxsize=None)
def forward_fn(model):
  return jax.jit(lambda p, *args: model.apply({"params": p}, *args))


def forward(model, enc, dec, enc_seg=None, dec_seg=None):
  enc_seg = jnp.ones_like(enc) if enc_seg is None else enc_seg
  dec_seg = jnp.ones_like(dec) if dec_seg is None else dec_seg
  return forward_fn(model)(init(model), enc, dec, enc_seg, dec_seg)


def changed(a, b):
  return [i for i in range(a.shape[1]) if not np.allclose(a[:, i], b[:, i])]


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_encoder_bidirectional_decoder_causal(positions):
  model = make(positions=positions)
  enc, dec = ids(2, (B, S)), ids(3, (B, L))
  base = forward(model, enc, dec)
  assert base.shape == (B, L, V) and base.dtype == jnp.float32
  # Any encoder token reaches every decoder position (bidirectional encoder + cross-attention)...
  assert changed(base, forward(model, enc.at[:, S - 1].set(5), dec)) == list(range(L))
  # ...a decoder token only reaches itself and later positions.
  assert changed(base, forward(model, enc, dec.at[:, 4].set((dec[:, 4] + 1) % V))) == list(range(4, L))


def test_encoder_padding_is_ignored():
  model = make()
  enc, dec = ids(4, (B, S)), ids(5, (B, L))
  enc_seg = jnp.array([[1] * 7 + [0] * 3] * B)
  a = forward(model, enc, dec, enc_seg)
  b = forward(model, enc.at[:, 7:].set(9), dec, enc_seg)
  np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("scan,positions", [(False, "rotary"), (False, "relative"), (True, "relative")])
def test_kv_cache_decoding_matches_full_forward(scan, positions):
  model = make(scan_layers=scan, positions=positions)
  params = init(make(positions=positions))
  if scan:  # the scanned twin's tree: each stack's blocks stacked on a leading layer axis
    params = dict(params)
    for stack in ("encoder", "decoder"):
      blocks = [params[stack][f"block_{i}"] for i in range(2)]
      params[stack] = {k: v for k, v in params[stack].items() if not k.startswith("block_")}
      params[stack]["blocks"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)
  enc, dec = ids(6, (B, S)), ids(7, (B, L))
  enc_seg = jnp.ones_like(enc)
  full = model.apply({"params": params}, enc, dec, enc_seg, jnp.ones_like(dec))
  encoded = model.apply({"params": params}, enc, enc_seg, method="encode")
  cache = init_decoder_cache(model, B, L, S)
  step = jax.jit(lambda c, t: model.apply({"params": params, "cache": c}, t, encoded, enc_seg,
                                          method="decode", decode=True, mutable=["cache"]))
  outs = []
  for t in range(L):
    logits, mutated = step(cache, dec[:, t:t + 1])
    cache = mutated["cache"]
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def sequence_logprob(model, params, enc, target):
  """log p(target | enc) by teacher forcing: decoder inputs are BOS + target[:-1]."""
  dec_in = jnp.asarray([[2] + target[:-1]], jnp.int32)
  logits = model.apply({"params": params}, enc, dec_in, jnp.ones_like(enc), jnp.ones_like(dec_in))
  logp = jax.nn.log_softmax(logits[0])
  return float(sum(logp[i, t] for i, t in enumerate(target)))


def test_greedy_sampling_and_beam_search():
  model = make()
  params = init(model)
  inputs = [list(range(4, 12)), list(range(10, 14))]
  greedy = seq2seq.generate(model, params, inputs, max_len=6, rng=jax.random.key(0), eos_id=EOS,
                            temperature=0.0)
  assert all(1 <= len(g) <= 6 for g in greedy)
  # Greedy is beam search with one beam.
  assert seq2seq.generate(model, params, inputs, max_len=6, rng=None, eos_id=EOS, beam_size=1) == greedy
  # Sampling is reproducible for a seed and differs across seeds.
  sample = lambda seed: seq2seq.generate(model, params, inputs, max_len=6, rng=jax.random.key(seed), eos_id=EOS,
                                         temperature=1.0)
  assert sample(1) == sample(1) and sample(1) != sample(2)
  # A wider beam finds a sequence at least as likely as greedy's, and its score is that log-probability.
  beams, scores = seq2seq.beam_search(model, params, inputs[:1], max_len=6, eos_id=EOS, beam_size=4)
  enc = jnp.asarray([inputs[0]], jnp.int32)
  np.testing.assert_allclose(scores[0], sequence_logprob(model, params, enc, beams[0]), rtol=1e-4)
  assert scores[0] >= sequence_logprob(model, params, enc, greedy[0]) - 1e-4


def test_relative_bias_is_one_table_per_stack_and_sees_packed_segments():
  model = make(positions="relative")
  params = init(model)
  assert params["encoder"]["relative_bias"].shape == params["decoder"]["relative_bias"].shape == (32, 2)
  assert not any("relative_bias" in str(k) for k in jax.tree_util.tree_flatten_with_path(params["encoder"]["block_0"])[0])
  # Two examples packed in a row give each its own outputs: positions (hence buckets) restart per segment.
  enc, dec = ids(8, (1, 4)), ids(9, (1, 3))
  alone = forward(model, enc, dec)
  packed = forward(model, jnp.concatenate([enc, enc], 1), jnp.concatenate([dec, dec], 1),
                   jnp.asarray([[1] * 4 + [2] * 4]), jnp.asarray([[1] * 3 + [2] * 3]))
  np.testing.assert_allclose(packed[:, 3:], alone, atol=1e-5)
  np.testing.assert_allclose(packed[:, :3], alone, atol=1e-5)


def test_flops_by_hand():
  """d 16, MLP 32, 2 layers, V 32, S 10 encoder and T 8 decoder tokens per row (learned positions: lookups)."""
  d, m = 16, 32
  model = make(positions="learned")
  params = jax.eval_shape(model.init, jax.random.key(0), ids(0, (B, S)), ids(1, (B, L)))["params"]
  attn = 3 * d * d + 3 * d + d * d + d  # qkv (+ bias), out (+ bias)
  mlp = d * m + m + m * d + d
  enc = 2 * (attn + mlp + 2 * 2 * d) + 2 * d  # two norms per block, the final norm
  kv = 2 * (2 * d * d + 2 * d)  # cross-attention keys and values: on the encoder's S outputs
  dec = 2 * (attn + (d * d + d) + (d * d + d) + mlp + 3 * 2 * d) + 2 * d  # + cross query and out, 3 norms
  forward = 2 * (enc * S + kv * S + dec * L + V * d * L) + 4 * d * 2 * (S * S + L * L + L * S)
  assert encdec.flops_per_token(model.config, S, L, params) == 3 * forward / S
