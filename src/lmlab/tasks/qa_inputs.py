"""Question answering: examples -> windows of their contexts -> model rows; window outputs -> answers.

A context longer than a row is read in overlapping windows (BERT's doc stride): windows start at context
tokens 0, doc_stride, 2 doc_stride, ... until one reaches the context's end. Each window is one row:
  span (encoder, bidirectional rnn): [CLS] question [SEP] window [SEP], token types 0 then 1 (from the
    window on); targets the answer's first and last token columns, or column 0 ([CLS]) for both when the
    question has no answer or the window does not hold all of it.
  generation, decoder: [BOS] question [SEP] window [SEP] answer [EOS], trained on answer + EOS.
  generation, encoder-decoder: encoder question [SEP] window [EOS], decoder [BOS] answer -> answer [EOS].
  The generation target is the answer when the window holds it, else "" (EOS alone).
Questions are cut to max_question_len tokens; the window takes what is left of the row.

Choosing across windows (BERT's SQuAD 2.0 rule, for both heads): each question's candidate is the best
non-empty answer of any window (span: start + end logit; generation: log-probability of answer + EOS);
its margin is that score minus the no-answer score, the lowest over the windows (span: the [CLS] start +
end logits; generation: log p(EOS first)), since "no answer" must hold in every window. The candidate is
the answer when its margin reaches the null threshold (0: the model's own choice; fine-tuning sets it to
the value that maximizes validation F1, as BERT's null_score_diff_threshold), else "".

Shape letters: W windows, L row length, N context tokens of one example.
"""

import dataclasses

import numpy as np

from lmlab.data.tokenizer import BOS_ID, CLS_ID, EOS_ID, SEP_ID
from lmlab.tasks import inputs

I32 = np.int32


@dataclasses.dataclass
class Windows:
  """The windows of a split's examples and how each maps back to its context."""
  arrays: dict  # model / loss arrays, one row per window
  example: np.ndarray  # int [W] the example each window reads
  first: np.ndarray  # int [W] the window's first context token (index into its example's tokens)
  column: np.ndarray  # int [W] the row column of that token (span rows)
  length: np.ndarray  # int [W] context tokens in the window
  spans: list[np.ndarray]  # per example: int [N, 2] character [begin, end) of each context token
  prompts: list[list[int]] | None = None  # generation: each window's decoding input


def context_tokens(sp, context: str) -> tuple[list[int], np.ndarray]:
  """(token ids, int [N, 2] character [begin, end) of each token's text without its leading space)."""
  proto = sp.encode(context, out_type="proto")
  # sentencepiece's offsets count UTF-8 bytes of the input: map them to characters.
  char_at_byte = np.repeat(np.arange(len(context) + 1), [len(ch.encode("utf-8")) for ch in context] + [1])
  ids, spans = [], np.zeros((len(proto.pieces), 2), np.int64)
  for i, piece in enumerate(proto.pieces):
    ids.append(piece.id)
    begin, end = int(char_at_byte[piece.begin]), int(char_at_byte[piece.end])
    while begin < end and context[begin].isspace():
      begin += 1
    spans[i] = begin, end
  return ids, spans


def answer_tokens(spans_N2: np.ndarray, start: int, text: str) -> tuple[int, int] | None:
  """(first, last) context token overlapping the answer's characters [start, start + len(text)); None
  for no answer."""
  if start < 0 or not text:
    return None
  end = start + len(text)
  overlap = np.flatnonzero((spans_N2[:, 1] > start) & (spans_N2[:, 0] < end))
  return (int(overlap[0]), int(overlap[-1])) if len(overlap) else None


def window_starts(num_tokens: int, size: int, stride: int) -> list[int]:
  """First token of each window of `size` tokens, `stride` apart, the last one reaching the end."""
  starts = [0]
  while starts[-1] + size < num_tokens:
    starts.append(starts[-1] + stride)
  return starts


def question_budget(mode: str, family: str, seq_len: int, question_len: int, max_target_len: int) -> int:
  """Context tokens a window can hold beside a question of question_len tokens."""
  if mode == "span":
    return seq_len - question_len - 3  # CLS, SEP, SEP
  if family == "encoder_decoder":
    return seq_len - question_len - 2  # SEP, EOS
  return seq_len - question_len - 4 - max_target_len  # BOS, SEP, SEP, EOS and the answer


def make_windows(sp, split, mode: str, family: str, seq_len: int, max_question_len: int, doc_stride: int,
                 max_target_len: int, prefix: bool = False) -> Windows:
  """The windows of a data.Split with contexts (mode "span" or "generation"); prefix: a decoder
  pretrained as a prefix LM reads the prompt as its bidirectional prefix."""
  by_context = {}
  questions = sp.encode(list(split.texts))
  rows, example, first, column, length, spans, targets, located = [], [], [], [], [], [], [], []
  for i, (context, question) in enumerate(zip(split.contexts, questions)):
    if context not in by_context:
      by_context[context] = context_tokens(sp, context)
    ids, token_spans = by_context[context]
    spans.append(token_spans)
    question = question[:max_question_len]
    budget = question_budget(mode, family, seq_len, len(question), max_target_len)
    gold = answer_tokens(token_spans, split.answer_starts[i], split.targets[i])
    located.append(gold is not None or not split.targets[i])
    for start in window_starts(len(ids), budget, max(1, min(doc_stride, budget))):
      window = ids[start:start + budget]
      inside = gold is not None and start <= gold[0] and gold[1] < start + len(window)
      if mode == "span":
        rows.append(([CLS_ID] + question + [SEP_ID], window + [SEP_ID]))
        col = len(question) + 2
        targets.append((col + gold[0] - start, col + gold[1] - start) if inside else (0, 0))
      elif family == "encoder_decoder":
        rows.append(question + [SEP_ID] + window + [EOS_ID])
        col = len(question) + 1
        targets.append(split.targets[i] if inside else "")
      else:
        rows.append([BOS_ID] + question + [SEP_ID] + window + [SEP_ID])
        col = len(question) + 2
        targets.append(split.targets[i] if inside else "")
      example.append(i)
      first.append(start)
      column.append(col)
      length.append(len(window))
  found = np.asarray(located, bool)[np.asarray(example, np.int64)]
  if mode == "span":
    arrays = span_arrays(rows, np.asarray(targets, I32).reshape(-1, 2), seq_len, column, length)
    # An answer that could not be located in its context teaches the span head nothing.
    arrays["weights"] *= found[:, None]
    prompts = None
  else:
    outputs = [x[:max_target_len] + [EOS_ID] for x in sp.encode(targets)]
    arrays = inputs.generation_rows(rows, outputs, family, seq_len, max_target_len, prefix)
    prompts = rows
  as_int = lambda x: np.asarray(x, np.int64)
  return Windows(arrays, as_int(example), as_int(first), as_int(column), as_int(length), spans, prompts)


def span_arrays(rows: list[tuple[list[int], list[int]]], targets_W2: np.ndarray, seq_len: int, column, length
                ) -> dict:
  """tokens, segment_ids, token_types (1 from the context on), candidates ([CLS] and the context's
  columns: where a span may start or end), targets [W, 2] and weights [W, 2]."""
  tokens, segment_ids = inputs.pad_rows([a + b for a, b in rows], seq_len)
  col_L = np.arange(seq_len)
  token_types = (col_L[None] >= np.array([len(a) for a, _ in rows])[:, None]) & (segment_ids > 0)
  column, length = np.asarray(column)[:, None], np.asarray(length)[:, None]
  candidates = ((col_L[None] >= column) & (col_L[None] < column + length)) | (col_L[None] == 0)
  return {"tokens": tokens, "segment_ids": segment_ids, "token_types": token_types.astype(I32),
          "candidates": candidates.astype(I32), "targets": targets_W2.astype(I32),
          "weights": np.ones(targets_W2.shape, np.float32)}


def best_span(start_L: np.ndarray, end_L: np.ndarray, first_col: int, last_col: int, max_answer_len: int,
              n_best: int = 20) -> tuple[float, int, int]:
  """(score, start column, end column) of the best span start <= end < start + max_answer_len inside
  columns [first_col, last_col], scored start + end logit, from the n_best starts and ends."""
  window_start, window_end = start_L[first_col:last_col + 1], end_L[first_col:last_col + 1]
  starts = np.argsort(-window_start)[:n_best]
  ends = np.argsort(-window_end)[:n_best]
  score_SE = window_start[starts][:, None] + window_end[ends][None, :]
  ok_SE = (ends[None, :] >= starts[:, None]) & (ends[None, :] < starts[:, None] + max_answer_len)
  if not ok_SE.any():
    return -np.inf, first_col, first_col
  s, e = np.unravel_index(np.argmax(np.where(ok_SE, score_SE, -np.inf)), score_SE.shape)
  return float(score_SE[s, e]), first_col + int(starts[s]), first_col + int(ends[e])


def span_candidates(windows: Windows, contexts: list[str], logits_W2L: np.ndarray, max_answer_len: int
                    ) -> tuple[list[str], np.ndarray]:
  """Each example's candidate answer and margin from its windows' start / end logits [W, 2, L]."""
  answers, nulls = {}, {}
  for w, (i, first, col, n) in enumerate(zip(windows.example, windows.first, windows.column, windows.length)):
    start_L, end_L = logits_W2L[w]
    nulls[i] = min(nulls.get(i, np.inf), float(start_L[0] + end_L[0]))
    if n == 0:
      continue
    score, s, e = best_span(start_L, end_L, int(col), int(col + n - 1), max_answer_len)
    if score > answers.get(i, (-np.inf, ""))[0]:
      begin, end = windows.spans[i][first + s - col][0], windows.spans[i][first + e - col][1]
      answers[i] = score, contexts[i][begin:end]
  return candidates(answers, nulls, len(contexts))


def candidates(answers: dict, nulls: dict, count: int) -> tuple[list[str], np.ndarray]:
  """([R] candidate texts, float [R] margins) from each example's best answer {i: (score, text)} and
  no-answer score {i: score}; an example without a non-empty answer has "" and margin -inf."""
  texts, margins = [], np.full(count, -np.inf)
  for i in range(count):
    score, text = answers.get(i, (-np.inf, ""))
    texts.append(text)
    if text:
      margins[i] = score - nulls.get(i, -np.inf)
  return texts, margins


def choose(texts: list[str], margins: np.ndarray, threshold: float = 0.0) -> list[str]:
  """The answers: each candidate whose margin reaches the threshold, else ""."""
  return [text if text and margin >= threshold else "" for text, margin in zip(texts, margins)]
