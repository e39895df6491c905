"""Model families behind one interface: `build` a Flax module from the config, `apply` it to a batch.

Decoder, encoder and recurrent families read the packed-row batch keys tokens / segment_ids / positions
(plus prefix for prefix LM and token_types for BERT pairs); the encoder-decoder reads encoder_* and
decoder_inputs / decoder_* keys. All return a dict with float32 `logits` [B, L, V] ([B, T, V] for the
encoder-decoder; and `nsp_logits` [B, 2] for mlm_nsp). With num_classes, `build` wraps the family's model
in a heads.Classifier whose `logits` are class logits [B, C]; with span, in a heads.SpanExtractor whose
`logits` are start and end logits [B, 2, L] (batch keys candidates and token_types). The ngram family has
no Flax module (see models/ngram.py).

Shape suffixes: B batch, L row length, T decoder target length, V vocabulary, C classes.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lmlab import objectives
from lmlab.errors import ConfigError
from lmlab.models import encdec, heads, recurrent, transformer

ENCDEC_INPUTS = ("encoder_tokens", "decoder_inputs", "encoder_segment_ids", "decoder_segment_ids",
                 "encoder_positions", "decoder_positions")


def build(cfg, vocab_size: int, num_classes: int = 0, pooling: str = "last", freeze_body: bool = False,
          span: bool = False) -> nn.Module:
  """The Flax module of cfg.model.family with the options cfg.objective needs (its model_options, see
  objectives/base.py); num_classes > 0: that module as the body of a classifier with the given pooling,
  span: as the body of a span extractor (see models/heads.py)."""
  if span:
    return heads.SpanExtractor(build(cfg, vocab_size), freeze_body, cfg.model.dropout_rate)
  if num_classes:
    return heads.Classifier(build(cfg, vocab_size), num_classes, pooling, freeze_body, cfg.model.dropout_rate)
  family, options = cfg.model.family, objectives.get(cfg.objective.name).model_options
  if family == "rnn":
    return recurrent.RecurrentLM(recurrent.RecurrentConfig.from_config(
        cfg.model, vocab_size, bidirectional=options.get("bidirectional", False)))
  if family == "encoder_decoder":
    return encdec.EncoderDecoder(transformer.TransformerConfig.from_config(cfg.model, vocab_size, cfg.data.seq_len))
  if family in ("decoder", "encoder"):
    encoder = family == "encoder"
    return transformer.Transformer(transformer.TransformerConfig.from_config(
        cfg.model, vocab_size, cfg.data.seq_len, causal=not encoder, num_token_types=2 if encoder else 0,
        mlm_head=encoder, nsp_head=options.get("nsp_head", False)))
  raise ValueError(f"config.model.family = {family!r} has no neural model to build.")


def dummy_inputs(model: nn.Module, batch_size: int, seq_len: int) -> tuple:
  """Positional inputs to initialize `model` with (parameter shapes do not depend on their values)."""
  tokens_BL = jnp.zeros((batch_size, seq_len), jnp.int32)
  return (tokens_BL, tokens_BL) if isinstance(model, encdec.EncoderDecoder) else (tokens_BL,)


def flops_per_token(model: nn.Module, seq_len: int, params, targets_length: int | None = None) -> float:
  """Training FLOPs per token of a seq_len row of `model` (forward + backward) given its (abstract) params:
  the count that runs log and reports use (transformer, recurrent and encdec.flops_per_token; the
  encoder-decoder's per encoder token, with targets_length decoder tokens per row, default seq_len); a
  classifier's or span extractor's cost is its body's, all counted per row token (the head is tiny)."""
  body = getattr(model, "body", model)
  if isinstance(body, recurrent.RecurrentLM):
    return recurrent.flops_per_token(body.config, params)
  if body is model and isinstance(model, encdec.EncoderDecoder):  # (a task head reads its encoder only)
    return encdec.flops_per_token(model.config, seq_len, targets_length or seq_len, params)
  return transformer.flops_per_token(body.config, seq_len, params)


def targets_length(cfg) -> int | None:
  """Decoder tokens per row of a pretraining objective that has a decoder (span corruption), else None."""
  if cfg.model.family != "encoder_decoder":
    return None
  spec = objectives.get(cfg.objective.name).data(cfg, cfg.tokenizer.vocab_size).spec(1)
  return spec["decoder_inputs"][0][1]


def abstract_params(cfg, vocab_size: int):
  """(cfg's model, its parameter shapes): from jax.eval_shape alone (no compile, no data)."""
  model = build(cfg, vocab_size)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *dummy_inputs(model, 1, cfg.data.seq_len)))
  return model, nn.meta.unbox(params["params"])


def config_flops_per_token(cfg, vocab_size: int) -> float:
  """flops_per_token of cfg's model, from its parameter shapes: e.g. to set the number of steps that spends
  a given compute budget."""
  model, params = abstract_params(cfg, vocab_size)
  return flops_per_token(model, cfg.data.seq_len, params, targets_length(cfg))


def non_embedding_count(params) -> int:
  """Parameters outside the embedding tables (token, position and token-type embeddings and the output
  projection, tied or not: every leaf under a name with "embed" in it): Kaplan et al.'s N."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return int(sum(leaf.size for path, leaf in leaves if not any("embed" in str(getattr(k, "key", k)) for k in path)))


def apply(model: nn.Module, variables, batch: dict, **kwargs) -> dict:
  """Runs `model` on a batch; kwargs (deterministic, rngs, mutable...) go to model.apply."""
  if isinstance(model, encdec.EncoderDecoder):
    return {"logits": model.apply(variables, *(batch[key] for key in ENCDEC_INPUTS), **kwargs)}
  inputs = (batch["tokens"], batch.get("segment_ids"), batch.get("positions"))
  if isinstance(model, heads.SpanExtractor):
    return {"logits": model.apply(variables, *inputs, candidates_BL=batch["candidates"],
                                  token_types_BL=batch.get("token_types"), **kwargs)}
  if isinstance(model, heads.Classifier):
    if "prefix" in batch:
      kwargs["prefix_BL"] = batch["prefix"]
    return {"logits": model.apply(variables, *inputs, **kwargs)}
  if isinstance(model, transformer.Transformer):
    for key in ("prefix", "token_types"):
      if key in batch:
        kwargs[f"{key}_BL"] = batch[key]
  out = model.apply(variables, *inputs, **kwargs)
  if isinstance(out, tuple):
    return {"logits": out[0], "nsp_logits": out[1]}
  return {"logits": out}


def transfer(params: dict, pretrained: dict, source: str = "the pretrained checkpoint"
             ) -> tuple[dict, int, list[str]]:
  """`params` (a task model's) with its body taken from `pretrained` (the pretraining model's params):
  a classifier's `body` subtree (and its `pooler`, BERT's, when the checkpoint has one), or the whole tree
  for a model without a head (generation). Returns
  (params, tensors restored, pretrained tensors the task does not use, e.g. the LM output layers);
  ConfigError if a body tensor is missing or has another shape (the architectures differ)."""
  classifier = "body" in params
  target = flax.traverse_util.flatten_dict(params["body"] if classifier else params)
  source_flat = flax.traverse_util.flatten_dict(pretrained)
  for key, value in target.items():
    if key not in source_flat or source_flat[key].shape != value.shape:
      raise ConfigError(f"The task model's parameter {'/'.join(key)} {value.shape} is not in {source} with "
                        "that shape; the architectures differ.")
  body = flax.traverse_util.unflatten_dict({key: source_flat[key] for key in target})
  used = set(target)
  out = dict(params, body=body) if classifier else body
  # A classifier's pooler is BERT's pretrained pooler (the NSP head's dense + tanh) where the checkpoint
  # has one of that shape; otherwise it stays freshly initialized, as the head does.
  if classifier and "pooler" in params and "pooler" in pretrained:
    pooler = flax.traverse_util.flatten_dict(params["pooler"])
    source_pooler = {k: source_flat.get(("pooler",) + k) for k in pooler}
    if all(v is not None and v.shape == pooler[k].shape for k, v in source_pooler.items()):
      out["pooler"] = flax.traverse_util.unflatten_dict(source_pooler)
      used |= {("pooler",) + k for k in pooler}
  dropped = sorted("/".join(k) for k in source_flat if k not in used)
  return out, len(used), dropped
