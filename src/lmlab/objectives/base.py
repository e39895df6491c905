"""What a pretraining objective is: one `Objective` record, declared beside its batch transform.

An objective names the model families it trains, cuts a split's encoded documents into rows, turns each
batch of rows into the arrays the model and loss read (a seeded numpy transform, see data/pipeline.py),
lists its loss terms, the derived model options it needs, and how a trained model completes a prompt.
Validation, model building, the train step, the loop and sampling all read these fields.

Shape suffixes (as in lmlab/__init__.py): B batch, L row length, W a row's scratch width.
"""

import dataclasses
from typing import Callable, Mapping

import numpy as np

F32, I32 = np.float32, np.int32

Transform = Callable[[dict, np.random.Generator], dict]  # (batch of rows, rng) -> model/loss batch


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """One cross-entropy term: model output `logits` against batch `targets`, weighted by batch `weights`.

  Its sums and metrics are named with `prefix` (loss_sum, nsp_loss_sum, ...). The term enters the total
  loss as scale x (its sum / its weights), scale = config.objective[scale_key] (1 without a key).
  """
  prefix: str = ""
  logits: str = "logits"
  targets: str = "targets"
  weights: str = "weights"
  scale_key: str | None = None
  scale: float = 1.0


TOKENS = LossTerm()  # the objective's token targets (next tokens, masked tokens, span targets)


@dataclasses.dataclass(frozen=True)
class ObjectiveData:
  """What the input pipeline needs of an objective, bound to a config and tokenizer."""
  # a split's documents (data/documents.py) -> its rows (data/pipeline.py's Rows: num_rows, get(index_B))
  rows: Callable[..., object]
  transform: Transform  # (batch of rows, rng) -> the model/loss batch
  spec: Callable[[int], dict]  # batch size -> {name: (shape, dtype)} of the transform's output


@dataclasses.dataclass(frozen=True)
class Objective:
  """One pretraining objective (see the module docstring)."""
  name: str
  families: tuple[str, ...]  # the config.model.family values it trains
  # (cfg, vocab_size, sp) -> ObjectiveData; sp (the sentencepiece model) only for piece-level options
  # such as whole-word masking, None elsewhere (e.g. the benchmark's synthetic batches).
  data: Callable[..., ObjectiveData]
  losses: tuple[LossTerm, ...] = (TOKENS,)
  # Terms evaluation reports beside `losses` but training never optimizes (e.g. masked LM's loss split by
  # what the input showed at the target: [MASK], a random token, or the token unchanged).
  eval_terms: tuple[LossTerm, ...] = ()
  # Derived model options the family's builder reads (bidirectional: an RNN reads its whole segment;
  # nsp_head: the encoder also returns next-sentence logits), and how inputs are fed (prefix: a prompt or a
  # task input is the model's bidirectional prefix, when sampling and fine-tuning).
  model_options: Mapping[str, bool] = dataclasses.field(default_factory=dict)
  # How a trained model completes a prompt (decode/complete.py): continue, fill_mask, fill_mask_pair
  # ([CLS] prompt [SEP], as sentence A) or seq2seq (decode the targets of a corrupted prompt).
  decode: str = "continue"
  # cfg -> None; raises ConfigError for settings this objective cannot run (before any compute).
  check: Callable[..., None] = lambda cfg: None

  def loss_terms(self, cfg) -> tuple[LossTerm, ...]:
    """The loss terms with their scales read from cfg.objective."""
    return tuple(dataclasses.replace(t, scale=float(cfg.objective[t.scale_key])) if t.scale_key else t
                 for t in self.losses)

  def evaluation_terms(self, cfg) -> tuple[LossTerm, ...]:
    """loss_terms(cfg), then the diagnostic eval_terms."""
    return self.loss_terms(cfg) + self.eval_terms


def segment_starts(segment_ids_BL) -> np.ndarray:
  """The column where each token's segment starts (our own, so we never trust "positions" blindly)."""
  _, length = segment_ids_BL.shape
  col_L = np.arange(length)
  new_BL = np.ones_like(segment_ids_BL, bool)
  new_BL[:, 1:] = segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1]
  return np.maximum.accumulate(np.where(new_BL, col_L, 0), axis=1)


def scatter_rows(values_BL, index_BL, keep_BL, width: int) -> np.ndarray:
  """out[b, index[b, l]] = values[b, l] where keep; zeros elsewhere ([B, W = width] int32)."""
  batch = values_BL.shape[0]
  out_BW = np.zeros((batch, width), I32)
  rows_BL = np.broadcast_to(np.arange(batch)[:, None], index_BL.shape)
  out_BW[rows_BL[keep_BL], index_BL[keep_BL]] = values_BL[keep_BL]
  return out_BW
