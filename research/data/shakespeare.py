"""Tiny Shakespeare, character level, from the real TFDS `tiny_shakespeare` builder.

Each TFDS split is one string (train 1,003,854 chars, validation and test 55,770 each). The
character vocabulary (65 symbols) comes from the train split and is saved as WORKDIR/vocab.json,
so a resumed run and sampling reuse the exact mapping. With `config.init_from=hf:PATH` the text
is tokenized by that checkpoint's tokenizer.json instead (saved as WORKDIR/vocab.json the same way),
and `config.data.tokenizer` picks another (e.g. 'sentencepiece', trained on the train split).

Training batches are random windows of block_size + 1 characters, drawn from a generator seeded
by (seed, step), so the data position is the step. Evaluation covers the whole eval split once,
in consecutive non-overlapping windows (the last one padded and masked), with each target's UTF-8
bytes (`target_bytes`) for bits per byte. Two optional data keys
(experiments/gpt2_tiny_shakespeare.py sets them) evaluate as transformers' shifted loss does:
`data.eval_windows='disjoint'` cuts windows of block_size + 1 tokens, each predicting its tokens
1..block_size from those before (the tail shorter than a window dropped), and `data.eval_chars=N`
keeps the eval split's first N characters (0 = all).

Why a module of its own: those two eval keys (the transformers comparison) and its published
numbers. A character LM over any other TFDS text feature is plain config (generic.py, with
data.targets=''), and it reuses this module's windows.
"""

from __future__ import annotations

import functools
import math

import ml_collections
import numpy as np

from research.config_checks import check_positive
from research.data import pipeline, spec, tfds_build
from research.data.spec import DatasetSpec, Meta
from research.data.tokenizers import FILE as VOCAB_FILE
from research.data.tokenizers import (
  CharVocab,
  SentencePiece,
  Tokenizer,
  check_choice,
  get_tokenizer,
  hf_tokenizer,
  token_bytes,
)
from research.errors import ConfigError

NAME = 'tiny_shakespeare'
SOURCE_FILES = ('input.txt',)


def load_text(data: ml_collections.ConfigDict, split: str) -> str:
  arrays = tfds_build.load_arrays(NAME, split, data.data_dir, data.manual_dir, SOURCE_FILES)
  return bytes(arrays['text'][0]).decode('utf-8')


EVAL_WINDOWS = ('chained', 'disjoint')


def get_vocab(train_text: str, workdir: str | None, process_index: int = 0,
              init_from: str = '', choice: str = '', vocab_size: int = 0) -> Tokenizer:
  """The workdir's saved tokenizer if there is one, else an `hf:` checkpoint's tokenizer.json,
  else config.data.tokenizer's (characters by default) on the train text, saved in the workdir."""
  def build(kind: str) -> Tokenizer:
    if kind == SentencePiece.KIND:
      return SentencePiece.train([train_text], vocab_size)
    return CharVocab.from_text(train_text)

  return get_tokenizer(choice, CharVocab.KIND, build, workdir=workdir,
                       process_index=process_index, fallback=hf_tokenizer(init_from))


def train_windows(ids: np.ndarray, step: int, *, seed: int, batch_size: int, block_size: int,
                  process_index: int = 0, process_count: int = 1) -> pipeline.Batch:
  """Global batch `step`: batch_size random windows; this process's rows only."""
  starts = np.random.default_rng([seed, step]).integers(0, len(ids) - block_size, batch_size)
  starts = starts[pipeline.process_rows(batch_size, process_index, process_count)]
  windows = ids[starts[:, None] + np.arange(block_size + 1)]
  return {'inputs': windows[:, :-1], 'targets': windows[:, 1:]}


def eval_windows(ids: np.ndarray, block_size: int) -> pipeline.Batch:
  """Every next-character target exactly once, in consecutive windows; padding masked out."""
  num_targets = len(ids) - 1
  num_windows = math.ceil(num_targets / block_size)
  padded = np.zeros(num_windows * block_size + 1, np.int32)
  padded[:len(ids)] = ids
  valid = np.arange(num_windows * block_size) < num_targets
  return {'inputs': padded[:-1].reshape(num_windows, block_size),
          'targets': padded[1:].reshape(num_windows, block_size),
          'target_mask': valid.reshape(num_windows, block_size).astype(np.float32)}


def disjoint_windows(ids: np.ndarray, block_size: int) -> pipeline.Batch:
  """Windows of block_size + 1 tokens, none shared; each predicts its tokens 1..block_size."""
  windows = ids[:len(ids) // (block_size + 1) * (block_size + 1)].reshape(-1, block_size + 1)
  return {'inputs': windows[:, :-1], 'targets': windows[:, 1:],
          'target_mask': np.ones(windows[:, 1:].shape, np.float32)}


def eval_text(config: ml_collections.ConfigDict) -> str:
  text = load_text(config.data, config.data.eval_split)
  chars = config.data.get('eval_chars', 0)
  if not isinstance(chars, int) or chars < 0:
    raise ConfigError(f'config.data.eval_chars must be an integer >= 0 (0 = all), got {chars!r}.')
  return text[:chars] if chars else text


def meta(config: ml_collections.ConfigDict, tokenizer: Tokenizer | None) -> Meta:
  return Meta(task='lm', vocab_size=tokenizer.vocab_size, block_size=config.data.block_size)


def get_dataset(config: ml_collections.ConfigDict, process_index: int, process_count: int,
                workdir: str | None = None) -> spec.Dataset:
  check_positive(config, 'data.block_size')
  choice = config.data.get('tokenizer', '')  # A test's partial config may lack the key.
  check_choice(choice, CharVocab.KIND, workdir)  # Before reading any data.
  block_size = config.data.block_size
  train_text = load_text(config.data, config.data.train_split)
  how = config.data.get('eval_windows', 'chained')
  if how not in EVAL_WINDOWS:
    raise ConfigError(f'config.data.eval_windows={how!r} is not one of {list(EVAL_WINDOWS)}.')
  vocab = get_vocab(train_text, workdir, process_index, config.get('init_from', ''),
                    choice, config.data.vocab_size if choice == SentencePiece.KIND else 0)
  train_ids = vocab.encode(train_text, f'{config.data.train_split} split')
  eval_ids = vocab.encode(eval_text(config), f'{config.data.eval_split} split')
  if len(train_ids) <= block_size:
    raise ConfigError(f'config.data.block_size={block_size} is not shorter than the train split '
                      f'({len(train_ids)} characters).')
  windows = (disjoint_windows if how == 'disjoint' else eval_windows)(eval_ids, block_size)
  if not len(windows['inputs']):
    raise ConfigError(f'The eval text has {len(eval_ids)} tokens: not one eval window of '
                      f'config.data.block_size={block_size}.')
  # Each target's UTF-8 bytes, so the eval reports bits per byte (= bits/char on ASCII text).
  windows['target_bytes'] = (token_bytes(vocab)[windows['targets']]
                             * windows['target_mask']).astype(np.float32)
  train_batch = functools.partial(train_windows, train_ids, seed=config.seed,
                                  batch_size=config.batch_size, block_size=block_size,
                                  process_index=process_index, process_count=process_count)
  return spec.Dataset(
      train_batch=train_batch,
      eval_batches=lambda: pipeline.padded_eval_batches(
          windows, batch_size=config.eval_batch_size, process_index=process_index,
          process_count=process_count),
      num_eval_examples=len(windows['inputs']),
      meta=meta(config, vocab),
      tokenizer=vocab)


SPEC = DatasetSpec(NAME, get_dataset, meta, inputs='tokens', tokenizer=CharVocab.KIND,
                   preprocess=f'character ids from {VOCAB_FILE} (sorted characters)')
