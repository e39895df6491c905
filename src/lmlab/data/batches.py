"""What one batch of each pretraining objective is: the rows a split is cut into, and the seeded transform
that turns a batch of rows into the arrays the model and loss read (see transforms.py).

  causal_lm, prefix_lm, mlm   rows = documents packed into seq_len rows (pipeline.pack_documents)
  mlm_nsp                     rows = consecutive chunk pairs of a document (transforms.pair_rows)
  span_corruption             rows = documents packed into the raw length that corrupts to exactly
                              seq_len encoder tokens (transforms.span_corruption_lengths)
"""

import dataclasses
import functools
from typing import Callable

import numpy as np

from lmlab.data import pipeline, tokenizer, transforms


@dataclasses.dataclass(frozen=True)
class ObjectiveData:
  rows: Callable[[list[np.ndarray]], dict]  # encoded documents of a split -> rows [R, ...]
  transform: pipeline.Transform  # (batch of rows, rng) -> model/loss batch
  spec: Callable[[int], dict]  # batch size -> {name: (shape, dtype)} of the transform's output


def word_starts(sp) -> np.ndarray:
  """bool [V]: pieces that start a word (sentencepiece marks them with a leading '▁')."""
  return np.array([sp.id_to_piece(i).startswith("\u2581") for i in range(sp.get_piece_size())])


def _shuffled_pair_rows(docs: list[np.ndarray], seq_len: int) -> dict:
  """pair_rows in a fixed random order: next_sentence draws NotNext halves from other documents of the
  same batch, so even the (unshuffled) evaluation batches must mix documents."""
  rows = transforms.pair_rows(docs, seq_len)
  order = np.random.default_rng(0).permutation(len(rows["doc_id"]))
  return {key: value[order] for key, value in rows.items()}


def for_config(cfg, sp) -> ObjectiveData:
  """The rows, transform and output spec of cfg.objective for the tokenizer `sp`."""
  ob, seq_len = cfg.objective, cfg.data.seq_len
  pack = functools.partial(pipeline.pack_documents, seq_len=seq_len)
  if ob.name in ("causal_lm", "prefix_lm"):
    transform = (transforms.causal_lm if ob.name == "causal_lm" else
                 functools.partial(transforms.prefix_lm, split=ob.prefix_fraction or "random"))
    return ObjectiveData(pack, transform, lambda b: transforms.lm_spec(b, seq_len))
  mlm = dict(vocab_size=sp.get_piece_size(), num_special=tokenizer.num_special_ids(cfg.tokenizer.num_sentinels),
             mask_rate=ob.mask_rate, replace_with_mask=ob.mask_token_rate, replace_random=ob.random_token_rate,
             whole_word=ob.whole_word, word_start_V=word_starts(sp) if ob.whole_word else None)
  transforms.check_mlm_settings(**mlm)
  if ob.name == "mlm":
    return ObjectiveData(pack, functools.partial(transforms.mask_tokens, **mlm),
                         lambda b: transforms.mask_tokens_spec(b, seq_len))
  if ob.name == "mlm_nsp":
    return ObjectiveData(functools.partial(_shuffled_pair_rows, seq_len=seq_len),
                         functools.partial(transforms.mlm_nsp, seq_len=seq_len, **mlm),
                         lambda b: transforms.mlm_nsp_spec(b, seq_len))
  if ob.name == "span_corruption":
    tokens_length, targets_length = transforms.span_corruption_lengths(seq_len, ob.noise_density,
                                                                       ob.mean_span_length)
    corrupt = functools.partial(
        transforms.span_corruption, inputs_length=seq_len, targets_length=targets_length,
        noise_density=ob.noise_density, mean_noise_span_length=ob.mean_span_length,
        num_sentinels=cfg.tokenizer.num_sentinels)

    def spec(batch_size):
      out = transforms.span_corruption_spec(batch_size, seq_len, targets_length)
      out["targets"] = out.pop("decoder_targets")
      return out

    return ObjectiveData(functools.partial(pipeline.pack_documents, seq_len=tokens_length),
                         lambda batch, rng: _rename(corrupt(batch, rng), decoder_targets="targets"), spec)
  raise ValueError(f"config.objective.name = {ob.name!r} has no data transform.")


def _rename(batch: dict, **names) -> dict:
  """The losses read `targets`; span corruption calls them decoder_targets."""
  return {names.get(key, key): value for key, value in batch.items()}
