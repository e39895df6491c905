"""Task examples -> fixed-shape model inputs for every family, and the batches of a fine-tuning run.

Classification rows: [CLS] text [SEP] for the encoder (BERT's format), [BOS] text [EOS] for decoder and
recurrent models, text [EOS] for the encoder of an encoder-decoder (pooled as finetune.pooling says); texts longer than the row are cut, or read as up to task.max_chunks rows
(chunks) whose pooled features the classifier combines.
Generation: a decoder-only model reads [BOS] source [SEP] target [EOS] and is trained on the target and
EOS only (the prompt at decoding time is [BOS] source [SEP]); an encoder-decoder reads source [EOS] and
decodes [BOS] target -> target [EOS], as in pretraining. With prefix (a decoder pretrained as a prefix
LM) the input, [BOS] text [EOS] or the prompt [BOS] source [SEP], is the bidirectional prefix (`prefix` 1
on its tokens), as the model was pretrained to read it.

Shape letters (as in lmlab/__init__.py): R rows (examples) of a split.
"""

import numpy as np

from lmlab.data.tokenizer import BOS_ID, CLS_ID, EOS_ID, SEP_ID

I32 = np.int32


def pad_rows(sequences: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [R, length], segment_ids [R, length]): zero padded; segment 1 on real tokens."""
  tokens = np.zeros((len(sequences), length), I32)
  for row, seq in zip(tokens, sequences):
    row[:len(seq)] = seq
  segment_ids = np.zeros_like(tokens)
  for row, seq in zip(segment_ids, sequences):
    row[:len(seq)] = 1
  return tokens, segment_ids


def classification_arrays(sp, texts: list[str], family: str, seq_len: int, labels=None, prefix: bool = False,
                          max_chunks: int = 1) -> dict:
  """tokens, segment_ids, targets (label ids, 0 if unknown) and weights (1) per example; with prefix also
  `prefix` (the whole input). max_chunks > 1: a text longer than one row is cut into up to max_chunks
  consecutive pieces, each framed as a row of its own (tokens, segment_ids [R, max_chunks, seq_len], zero
  rows after a text's last piece; the classifier pools each and combines them); the rest is cut."""
  width = seq_len - (1 if family == "encoder_decoder" else 2)  # text tokens per row
  if family == "encoder":
    frame = lambda x: [CLS_ID] + x + [SEP_ID]
  elif family == "encoder_decoder":
    frame = lambda x: x + [EOS_ID]
  else:
    frame = lambda x: [BOS_ID] + x + [EOS_ID]
  chunks = [[frame(x[i:i + width]) for i in range(0, max(len(x), 1), width)][:max_chunks]
            for x in sp.encode(list(texts))]
  if max_chunks == 1:
    tokens, segment_ids = pad_rows([c[0] for c in chunks], seq_len)
  else:
    rows = [piece for c in chunks for piece in c + [[]] * (max_chunks - len(c))]
    tokens, segment_ids = (a.reshape(len(chunks), max_chunks, seq_len) for a in pad_rows(rows, seq_len))
  targets = np.zeros(len(chunks), I32) if labels is None else np.asarray(labels, I32)
  arrays = {"tokens": tokens, "segment_ids": segment_ids, "targets": targets,
            "weights": np.ones(len(chunks), np.float32)}
  return dict(arrays, prefix=segment_ids.copy()) if prefix else arrays


def prompts(sp, sources: list[str], family: str, seq_len: int, max_target_len: int) -> list[list[int]]:
  """Decoding inputs: [BOS] source [SEP] (decoder-only) or source [EOS] (encoder of an encoder-decoder)."""
  ids = sp.encode(list(sources))
  if family == "encoder_decoder":
    return [x[:seq_len - 1] + [EOS_ID] for x in ids]
  budget = seq_len - max_target_len - 3  # room for BOS, SEP, the target and EOS
  return [[BOS_ID] + x[:budget] + [SEP_ID] for x in ids]


def generation_arrays(sp, sources: list[str], targets: list[str], family: str, seq_len: int,
                      max_target_len: int, prefix: bool = False) -> dict:
  """Teacher-forced training / scoring arrays of (source, target) texts; see generation_rows."""
  outputs = [x[:max_target_len] + [EOS_ID] for x in sp.encode(list(targets))]
  return generation_rows(prompts(sp, sources, family, seq_len, max_target_len), outputs, family, seq_len,
                         max_target_len, prefix)


def generation_rows(inputs: list[list[int]], outputs: list[list[int]], family: str, seq_len: int,
                    max_target_len: int, prefix: bool = False) -> dict:
  """Arrays for decoding inputs (prompts) and their outputs (target ids + EOS, at most max_target_len + 1),
  with `targets` and `weights` on the output tokens; with prefix (decoder-only) also `prefix` on the
  prompt tokens."""
  prefix = prefix and family != "encoder_decoder"
  if family == "encoder_decoder":
    enc_tokens, enc_segments = pad_rows(inputs, seq_len)
    dec_targets, dec_segments = pad_rows(outputs, max_target_len + 1)
    dec_inputs = np.zeros_like(dec_targets)
    dec_inputs[:, 0] = BOS_ID
    dec_inputs[:, 1:] = dec_targets[:, :-1]
    dec_inputs *= dec_segments
    positions = lambda a: np.broadcast_to(np.arange(a.shape[1], dtype=I32), a.shape).copy()
    return {"encoder_tokens": enc_tokens, "encoder_segment_ids": enc_segments,
            "encoder_positions": positions(enc_tokens), "decoder_inputs": dec_inputs,
            "decoder_segment_ids": dec_segments, "decoder_positions": positions(dec_inputs),
            "targets": dec_targets, "weights": dec_segments.astype(np.float32)}
  tokens, segment_ids = pad_rows([p + o for p, o in zip(inputs, outputs)], seq_len)
  targets = np.zeros_like(tokens)
  targets[:, :-1] = tokens[:, 1:]
  weights = np.zeros(tokens.shape, np.float32)
  prefix_RL = np.zeros_like(tokens)
  for row, mask, (p, o) in zip(weights, prefix_RL, zip(inputs, outputs)):
    row[len(p) - 1:len(p) - 1 + len(o)] = 1.0  # positions whose next token is a target token or EOS
    mask[:len(p)] = 1
  arrays = {"tokens": tokens, "segment_ids": segment_ids, "targets": targets, "weights": weights}
  return dict(arrays, prefix=prefix_RL) if prefix else arrays


def num_examples(arrays: dict) -> int:
  return len(arrays["targets"])


def take(arrays: dict, index: np.ndarray) -> dict:
  """Rows `index` of every array; index -1 is a padding row (zeros, weight 0)."""
  index = np.asarray(index)
  out = {}
  for key, value in arrays.items():
    rows = value[np.maximum(index, 0)].copy()
    rows[index < 0] = 0
    out[key] = rows
  return out


def train_order(n: int, batch_size: int, num_steps: int, seed: int) -> np.ndarray:
  """[num_steps, batch_size] example indices: consecutive seeded permutations of range(n) (one per
  epoch), so every example is seen once per epoch whatever the batch size."""
  epochs = -(-num_steps * batch_size // n)
  stream = np.concatenate([np.random.default_rng([seed, 0xF17E, epoch]).permutation(n) for epoch in range(epochs)])
  return stream[:num_steps * batch_size].reshape(num_steps, batch_size)


def eval_order(n: int, batch_size: int) -> np.ndarray:
  """[num_batches, batch_size] indices covering range(n) once, padded with -1."""
  num_batches = -(-n // batch_size)
  index = np.full(num_batches * batch_size, -1, np.int64)
  index[:n] = np.arange(n)
  return index.reshape(num_batches, batch_size)


def local_rows(global_index: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous share of a global batch's rows."""
  per_process = len(global_index) // process_count
  return global_index[process_index * per_process:(process_index + 1) * per_process]
