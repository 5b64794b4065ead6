"""GLUE SST-2 as word ids, for the encoder classifier or masked-LM pre-training.

Built with the `sst2` TFDS builder (research/data/builders/sst2.py) from the GLUE TSVs. Train is
67,349 labelled phrases from the SST parse trees; evaluation is on GLUE dev (872 sentences, the
usual offline SST-2 figure; test labels are private).

Tokenizer: the text is already lower-cased and PTB-tokenized (`n't`, `'s`, punctuation split), so
whitespace words are the natural unit: 14.3k words seen at least twice in train, 5.96% of dev
tokens outside them. Words seen once map to [UNK] (`data.vocab_min_count=2`), so [UNK], which
every unseen dev word becomes, is trained. Characters/bytes would make sequences ~5x longer
(attention and steps ~5x dearer on a CPU) and a subword vocabulary mostly re-splits words we
already have. The vocabulary is saved as WORKDIR/vocab.json; a resumed run, and a fine-tuning run
with `config.init_from` pointing at a pre-training run, reuse that run's file, so ids match.

Batches: `data.objective='classification'` gives inputs/input_mask/targets (label per row);
`'mlm'` gives BERT's corruption (`data.mask_rate` of the words: 80% [MASK], 10% a random word,
10% kept), the chosen positions (`mlm_positions`, where the model predicts), the original words
there (`targets`) and which of those slots count (`target_mask`). Training
batches come from length buckets (`data.length_buckets`): each step draws one bucket (with
probability proportional to its size) and a batch from it, cut to the bucket's width; most
phrases are short, so most steps run on 16 positions instead of 64. Still a pure function of
(seed, step).

Why a module of its own rather than plain config (generic.py): its TFDS builder is ours (it
must be imported to register), the masked-LM objective and the length buckets are batching the
generic path does not do, and a fine-tuning run reuses its pre-training run's vocabulary.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import logging

from research.config_checks import check_choice, check_positive
from research.data import pipeline, spec, tfds_build
from research.data.spec import DatasetSpec, Meta
from research.data.tokenizers import FILE as VOCAB_FILE
from research.data.tokenizers import (
  MASK,
  SPECIALS,
  UNK,
  HFTokenizer,
  SentencePiece,
  Tokenizer,
  WordVocab,
  get_tokenizer,
  hf_tokenizer,
  load_tokenizer,
)
from research.data.tokenizers import check_choice as check_tokenizer
from research.errors import ConfigError

NAME = 'sst2'
SOURCE_FILES = ('train.tsv', 'dev.tsv', 'test.tsv')
OBJECTIVES = ['classification', 'mlm']


def load_split(data: ml_collections.ConfigDict, split: str) -> tuple[list[str], np.ndarray]:
  """(sentences, labels) in file order."""
  # Registers the TFDS builder; here, not at the top: it imports TensorFlow (via TFDS).
  from research.data.builders import sst2 as _  # noqa: F401

  arrays = tfds_build.load_arrays(NAME, split, data.data_dir, data.manual_dir, SOURCE_FILES)
  order = np.argsort(arrays['idx'])
  return ([bytes(s).decode('utf-8') for s in arrays['sentence'][order]],
          arrays['label'][order].astype(np.int32))


def _vocab_beside(path: str) -> str | None:
  """vocab.json in a run's workdir, given the workdir or one of its checkpoint folders."""
  path = os.path.abspath(os.path.expanduser(path))
  for _ in range(4):  # WORKDIR/checkpoints/STEP/state at most.
    if os.path.exists(os.path.join(path, VOCAB_FILE)):
      return os.path.join(path, VOCAB_FILE)
    path = os.path.dirname(path)
  return None


def get_vocab(train_texts: list[str], min_count: int, workdir: str | None,
              init_from: str = '', process_index: int = 0, choice: str = '',
              vocab_size: int = 0) -> Tokenizer:
  """The workdir's vocabulary, else the pre-trained run's (init_from: a run, or an hf:PATH
  checkpoint's tokenizer.json, e.g. BERT's WordPiece), else config.data.tokenizer's (words by
  default) built from train."""
  fallback = hf_tokenizer(init_from)
  source = _vocab_beside(init_from) if init_from and fallback is None else None
  if source:
    fallback = load_tokenizer(source, WordVocab.KIND)
    logging.info('Vocabulary of %d tokens from the pre-trained run: %s', len(fallback), source)

  def build(kind: str) -> Tokenizer:
    if kind == SentencePiece.KIND:
      return SentencePiece.train(train_texts, vocab_size)
    return WordVocab.from_texts(train_texts, min_count)

  return get_tokenizer(choice, WordVocab.KIND, build, workdir=workdir,
                       process_index=process_index, fallback=fallback)


def bucket_train_batch(arrays: pipeline.Batch, lengths: np.ndarray, step: int, *, seed: int,
                       batch_size: int, buckets: tuple[int, ...],
                       widest: bool = False) -> pipeline.Batch:
  """Global batch `step`: rows of one length bucket, cut to its width.

  `widest`: rows of the widest bucket that has any phrase instead (the largest batch shape a run
  can see: what memory is sized and the benchmark times at).
  """
  bucket_of = np.searchsorted(np.asarray(buckets), lengths)  # Smallest width >= the length.
  sizes = np.bincount(bucket_of, minlength=len(buckets))
  rng = np.random.default_rng([seed, step])
  b = rng.choice(len(buckets), p=sizes / sizes.sum())  # Every phrase equally likely.
  if widest:
    b = int(np.flatnonzero(sizes)[-1])
  members = np.flatnonzero(bucket_of == b)
  idx = members[rng.choice(len(members), batch_size, replace=len(members) < batch_size)]
  return {k: v[idx, :buckets[b]] if v.ndim == 2 else v[idx] for k, v in arrays.items()}


def mask_tokens(batch: pipeline.Batch, rng: np.random.Generator, rate: float,
                vocab_size: int) -> pipeline.Batch:
  """BERT's masked-LM corruption: per row, max(1, round(rate * words)) positions are chosen.

  Chosen words become [MASK] (80%), a random word (10%) or stay (10%). The model predicts at
  `mlm_positions` (BxK, K = the most any row of this width needs); `targets` are the original
  words there and `target_mask` marks the K slots a row really uses.
  """
  ids, valid = batch['inputs'], batch['input_mask'].astype(bool)
  width = ids.shape[1]
  slots = max(1, int(np.round(rate * width)))
  num = np.maximum(1, np.round(rate * valid.sum(1))).astype(np.int64)  # Never more than slots.
  scores = np.where(valid, rng.random(ids.shape), np.inf)  # Padding sorts last.
  positions = np.argsort(scores, axis=1)[:, :slots].astype(np.int32)
  rows = np.arange(len(ids))[:, None]
  used = (np.arange(slots)[None, :] < num[:, None]) & valid[rows, positions]  # Empty rows: none.
  action = rng.random(positions.shape)
  random_words = rng.integers(len(SPECIALS), vocab_size, positions.shape, dtype=np.int32)
  replacement = np.where(action < 0.8, MASK, np.where(action < 0.9, random_words,
                                                      ids[rows, positions]))
  corrupted = ids.copy()
  corrupted[rows, positions] = np.where(used, replacement, ids[rows, positions])
  return {'inputs': corrupted.astype(np.int32), 'input_mask': batch['input_mask'],
          'mlm_positions': positions, 'targets': ids[rows, positions].astype(np.int32),
          'target_mask': used.astype(np.float32)}


def drop_words(batch: pipeline.Batch, rng: np.random.Generator, rate: float,
               unk: int = UNK) -> pipeline.Batch:
  """Word dropout: a `rate` share of the words become [UNK] (regularizes; trains [UNK])."""
  dropped = (rng.random(batch['inputs'].shape) < rate) & batch['input_mask'].astype(bool)
  return dict(batch, inputs=np.where(dropped, unk, batch['inputs']).astype(np.int32))


def _check(data: ml_collections.ConfigDict) -> tuple[int, tuple[int, ...]]:
  wrapped = ml_collections.ConfigDict({'data': data})
  check_positive(wrapped, 'data.max_len', 'data.vocab_min_count')
  check_choice(wrapped, 'data.objective', OBJECTIVES)
  if data.objective == 'mlm' and not 0.0 < data.mask_rate < 1.0:
    raise ConfigError(f'config.data.mask_rate must be in (0, 1), got {data.mask_rate!r}.')
  if not 0.0 <= data.word_dropout < 1.0:
    raise ConfigError(f'config.data.word_dropout must be in [0, 1), got {data.word_dropout!r}.')
  buckets = tuple(sorted(b for b in data.length_buckets if b < data.max_len)) + (data.max_len,)
  if any(not isinstance(b, int) or b <= 0 for b in buckets):
    raise ConfigError(f'config.data.length_buckets must be positive integers, got '
                      f'{tuple(data.length_buckets)!r}.')
  return data.max_len, buckets


def meta(config: ml_collections.ConfigDict, tokenizer: Tokenizer | None) -> Meta:
  if config.data.objective == 'mlm':
    return Meta(task='mlm', vocab_size=tokenizer.vocab_size, max_len=config.data.max_len)
  return Meta(task='classification', vocab_size=tokenizer.vocab_size,
              max_len=config.data.max_len, num_classes=2)


def get_dataset(config: ml_collections.ConfigDict, process_index: int, process_count: int,
                workdir: str | None = None) -> spec.Dataset:
  max_len, buckets = _check(config.data)
  choice = config.data.get('tokenizer', '')  # A test's partial config may lack the key.
  check_tokenizer(choice, WordVocab.KIND, workdir)  # Before reading any data.
  train_texts, train_labels = load_split(config.data, config.data.train_split)
  eval_texts, eval_labels = load_split(config.data, config.data.eval_split)
  vocab = get_vocab(train_texts, config.data.vocab_min_count, workdir,
                    config.get('init_from', ''), process_index, choice,
                    config.data.vocab_size if choice == SentencePiece.KIND else 0)
  unk = UNK
  if isinstance(vocab, HFTokenizer):
    if config.data.objective == 'mlm':  # Its [CLS]/[SEP] and [MASK] id are not handled yet.
      raise ConfigError('data.objective=mlm with an hf:PATH tokenizer is not supported yet; '
                        'fine-tune a classifier (data.objective=classification).')
    unk = vocab.token_id('[UNK]') if vocab.token_id('[UNK]') is not None else UNK
  elif isinstance(vocab, SentencePiece):
    if config.data.objective == 'mlm' and vocab.token_id(SPECIALS[MASK]) != MASK:
      raise ConfigError('data.objective=mlm needs [MASK] at id 2, as a SentencePiece model '
                        "trained here (data.tokenizer='sentencepiece') has; this .model lacks it.")
    unk = vocab.unk_id
  train_ids, train_mask, cut = vocab.encode_batch(train_texts, max_len)
  eval_ids, eval_mask, eval_cut = vocab.encode_batch(eval_texts, max_len)
  if cut or eval_cut:
    logging.warning('data.max_len=%d cuts %d train and %d eval sentences.', max_len, cut, eval_cut)
  train = {'inputs': train_ids, 'input_mask': train_mask, 'targets': train_labels}
  evals = {'inputs': eval_ids, 'input_mask': eval_mask, 'targets': eval_labels}
  mlm = config.data.objective == 'mlm'
  if mlm:  # Masked once, with a fixed seed: every eval scores the same positions.
    evals = mask_tokens(evals, np.random.default_rng([config.seed, 2**31 - 1]),
                        config.data.mask_rate, len(vocab))
    train = {k: train[k] for k in ('inputs', 'input_mask')}
  lengths = train_mask.sum(1)

  rows = pipeline.process_rows(config.batch_size, process_index, process_count)

  def train_batch(step: int, widest: bool = False) -> pipeline.Batch:
    # The global batch (masks included) is drawn whole, so it is the same on any process count.
    batch = bucket_train_batch(train, lengths, step, seed=config.seed,
                               batch_size=config.batch_size, buckets=buckets, widest=widest)
    rng = np.random.default_rng([config.seed, step, 1])
    if mlm:
      batch = mask_tokens(batch, rng, config.data.mask_rate, len(vocab))
    elif config.data.word_dropout:
      batch = drop_words(batch, rng, config.data.word_dropout, unk)
    return {k: v[rows] for k, v in batch.items()}

  return spec.Dataset(
      train_batch=train_batch,
      eval_batches=lambda: pipeline.padded_eval_batches(
          evals, batch_size=config.eval_batch_size, process_index=process_index,
          process_count=process_count),
      num_eval_examples=len(eval_labels),
      meta=meta(config, vocab),
      widest_train_batch=(lambda step: train_batch(step, widest=True)) if len(buckets) > 1
      else None,
      tokenizer=vocab)


SPEC = DatasetSpec(NAME, get_dataset, meta, inputs='text', labels=('negative', 'positive'),
                   tokenizer=WordVocab.KIND,
                   preprocess=f'lower-cased PTB-tokenized text split on whitespace; word ids from '
                              f'{VOCAB_FILE} ([PAD]=0, [UNK]=1), right-padded; input_mask 1 on '
                              'words, 0 on padding')

