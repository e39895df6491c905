"""Fill-mask for masked-LM models (BERT-style encoders, bidirectional LSTM/GRU): the top-k pieces for
every [MASK] in a prompt such as "The [MASK] rose sharply".

The text is laid out as in training: [BOS] text [EOS] for mlm (packed documents), [CLS] text [SEP] with
token type 0 for mlm_nsp (sentence A alone).

Shape suffixes: B batch (prompts), L row length, V vocabulary.
"""

import flax.linen as nn
import jax
import numpy as np

from lmlab import models
from lmlab.data import tokenizer


def encode_prompt(sp, text: str, pair: bool) -> list[int]:
  """Token ids of a prompt; "[MASK]" encodes to MASK_ID (a reserved piece). sentencepiece emits a lone
  word-boundary piece before a [MASK] preceded by a space; it is dropped, since a masked word piece
  carries its own boundary."""
  ids = sp.encode(text)
  boundary = sp.piece_to_id("\u2581")
  ids = [i for k, i in enumerate(ids)
         if not (i == boundary and k + 1 < len(ids) and ids[k + 1] == tokenizer.MASK_ID)]
  start, end = (tokenizer.CLS_ID, tokenizer.SEP_ID) if pair else (tokenizer.BOS_ID, tokenizer.EOS_ID)
  return [start] + ids + [end]


def fill_mask(model: nn.Module, params, sp, prompts: list[str], *, seq_len: int, top_k: int = 5,
              pair: bool = False) -> list[list[list[tuple[str, float]]]]:
  """For each prompt, for each [MASK] in it: the top_k (piece, probability) pairs, most likely first."""
  encoded = [encode_prompt(sp, p, pair) for p in prompts]
  if any(tokenizer.MASK_ID not in ids for ids in encoded):
    raise ValueError("fill-mask needs a [MASK] in every prompt, e.g. \"The [MASK] rose sharply\".")
  if max(map(len, encoded)) > seq_len:
    raise ValueError(f"A prompt has {max(map(len, encoded))} tokens; the model reads at most {seq_len}.")
  tokens_BL = np.zeros((len(prompts), seq_len), np.int32)
  for row, ids in zip(tokens_BL, encoded):
    row[:len(ids)] = ids
  segment_ids_BL = (tokens_BL != tokenizer.PAD_ID).astype(np.int32)
  batch = {"tokens": tokens_BL, "segment_ids": segment_ids_BL,
           "positions": np.where(segment_ids_BL > 0, np.arange(seq_len), 0).astype(np.int32)}
  if pair:
    batch["token_types"] = np.zeros_like(tokens_BL)
  logits_BLV = jax.jit(lambda p, b: models.apply(model, {"params": p}, b)["logits"])(
      nn.meta.unbox(params), batch)
  probs_BLV = np.asarray(jax.nn.softmax(logits_BLV, axis=-1))
  results = []
  for b, ids in enumerate(encoded):
    per_mask = []
    for t in np.flatnonzero(np.asarray(ids) == tokenizer.MASK_ID):
      best = np.argsort(-probs_BLV[b, t])[:top_k]
      per_mask.append([(sp.id_to_piece(int(i)), float(probs_BLV[b, t, i])) for i in best])
    results.append(per_mask)
  return results


def describe(candidates: list[list[tuple[str, float]]]) -> str:
  """'[MASK] 1: ▁shares 0.21, ▁prices 0.10 | [MASK] 2: ...' for printing."""
  return " | ".join(f"[MASK] {k + 1}: " + ", ".join(f"{piece} {p:.2f}" for piece, p in mask)
                    for k, mask in enumerate(candidates))
