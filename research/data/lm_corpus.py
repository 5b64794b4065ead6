"""A language model on a text corpus larger than RAM: tokenized once into shards
(corpus_build.py), read back a window at a time (corpus.py).

config.data.name = 'lm_corpus'. config.data.corpus.train_files (globs) are tokenized once into
`<cache_dir>/<key>/` and read a window at a time; the eval split is
config.data.corpus.eval_files, or else the documents in the last eval_fraction of the train
files' bytes (nanoGPT's 90/10 split, at a document boundary). The tokenizer is chosen by
config.data.tokenizer as for every text dataset (tokenizers.get_tokenizer): the workdir's
vocab.json when resuming, else a file (PATH.model, a tokenizer.json, a saved vocab.json), else
'sentencepiece' trained on the train documents, else (the default, 'char') the characters of the
train files; it is saved as WORKDIR/vocab.json, so a resumed run and sampling reuse it.

Train batches are windows of block_size + 1 tokens at uniform random positions of the train
stream (documents back to back), drawn from a generator seeded by (seed, step), as Tiny
Shakespeare's, so the data position is the step; each process reads only its rows. Evaluation
covers the whole eval split once in consecutive windows (the last one padded and masked), with
each target's UTF-8 byte count (`target_bytes`), so the eval reports bits per byte.

Packing (config.data.packing): the same windows, plus `segment_ids` (1, 2, ... for each document
in the window) and `positions` (0 at each document start and at the window's start), so the model
attends only within a document and positions restart per document; a target in another document
than its input (the first token of the next one) is masked out of the loss.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Iterator

import ml_collections
import numpy as np

from research import paths
from research.config_checks import check_choice, check_positive
from research.data import corpus, corpus_build, pipeline, spec, tfds_build, tokenizers
from research.data.corpus import Split
from research.data.spec import DatasetSpec, Meta
from research.data.tokenizers import FILE as VOCAB_FILE
from research.data.tokenizers import CharVocab, SentencePiece, Tokenizer, token_bytes
from research.errors import ConfigError

NAME = 'lm_corpus'
VERIFY = ['sha256', 'size']  # config.data.corpus.verify: every byte of every shard, or sizes.


def cache_dir(config: ml_collections.ConfigDict) -> str:
  return (config.data.corpus.cache_dir
          or os.path.join(config.data.data_dir or tfds_build.default_data_dir(), NAME))


def sources(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
  c = config.data.corpus
  if not c.eval_files and not 0 < c.eval_fraction < 1:
    raise ConfigError(f'config.data.corpus.eval_fraction={c.eval_fraction!r} must be in (0, 1) '
                      'when config.data.corpus.eval_files is empty (the eval split is held out '
                      'from the train files).')
  return {'train': corpus_build.resolve_files(c.train_files, 'data.corpus.train_files'),
          'eval': corpus_build.resolve_files(c.eval_files, 'data.corpus.eval_files')
          if c.eval_files else []}


def cached_char_vocab(folder: str, files: list[str]) -> CharVocab:
  """The characters of the train files, found once and kept in the cache dir."""
  key = hashlib.sha256(json.dumps([corpus_build.source_record(p) for p in files]).encode())
  path = os.path.join(folder, f'charvocab-{key.hexdigest()[:16]}.json')
  if not os.path.exists(path):
    with tfds_build.build_lock(folder, os.path.basename(path)):
      if not os.path.exists(path):
        corpus_build.char_vocab(files).save(path)
  return CharVocab.load(path)


def get_tokenizer(config: ml_collections.ConfigDict, workdir: str | None,
                  files: dict[str, list[str]]) -> Tokenizer:
  """The workdir's saved tokenizer, else config.data.tokenizer's, by default the characters of
  the train files; not saved here (get_dataset saves it once every shard check passed)."""
  c = config.data.corpus

  def build(kind: str) -> Tokenizer:
    if kind == SentencePiece.KIND:  # Holds the train split's text in memory while it trains.
      return SentencePiece.train(corpus_build.train_text(files, c.separator, c.eval_fraction),
                                 config.data.vocab_size)
    return cached_char_vocab(cache_dir(config), files['train'])

  return tokenizers.get_tokenizer(config.data.tokenizer, CharVocab.KIND, build, workdir=workdir,
                                  save=False)


def segments(doc_starts: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """(segment_ids, positions) of stream tokens [start, start + length), given the stream
  positions in that range where a document starts: segments count from 1 at the window's
  start, positions restart at 0 at each document start (and at the window's)."""
  begins = np.zeros(length, bool)
  begins[0] = True
  begins[np.asarray(doc_starts, np.int64) - start] = True
  index = np.arange(length)
  positions = index - np.maximum.accumulate(np.where(begins, index, 0))
  return np.cumsum(begins).astype(np.int32), positions.astype(np.int32)


def window(split: Split, start: int, block_size: int, packing: bool) -> pipeline.Batch:
  """One example: block_size inputs from `start` and their next tokens (fewer at the stream's
  end: zero-padded, the missing targets masked)."""
  length = min(block_size + 1, split.num_tokens - start)
  tokens = np.zeros(block_size + 1, np.int32)
  tokens[:length] = split.read(start, length)
  valid = np.arange(block_size) < length - 1
  out = {'inputs': tokens[:-1], 'targets': tokens[1:], 'target_mask': valid}
  if packing:
    seg = np.zeros(block_size + 1, np.int32)
    pos = np.zeros(block_size + 1, np.int32)
    seg[:length], pos[:length] = segments(split.doc_starts_in(start, start + length), start,
                                          length)
    out.update(segment_ids=seg[:-1], positions=pos[:-1])
    out['target_mask'] = valid & (seg[1:] == seg[:-1])  # No target across a document boundary.
  return out


def stack(rows: list[pipeline.Batch]) -> pipeline.Batch:
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  batch['target_mask'] = batch['target_mask'].astype(np.float32)
  return batch


def train_windows(split: Split, step: int, *, seed: int, batch_size: int, block_size: int,
                  packing: bool = False, process_index: int = 0,
                  process_count: int = 1) -> pipeline.Batch:
  """Global batch `step`: batch_size random windows; this process's rows only (read from disk)."""
  starts = np.random.default_rng([seed, step]).integers(0, split.num_tokens - block_size,
                                                        batch_size)
  starts = starts[pipeline.process_rows(batch_size, process_index, process_count)]
  batch = stack([window(split, int(s), block_size, packing) for s in starts])
  if not packing:  # Every target counts: as Tiny Shakespeare's batches, no mask to send.
    del batch['target_mask']
  return batch


def num_eval_windows(split: Split, block_size: int) -> int:
  return math.ceil((split.num_tokens - 1) / block_size)


def eval_batches(split: Split, *, block_size: int, batch_size: int, packing: bool,
                 bytes_table: np.ndarray, process_index: int = 0,
                 process_count: int = 1) -> Iterator[pipeline.Batch]:
  """Every target of the split exactly once, in consecutive windows of block_size; padded rows
  have mask 0. `target_bytes`: each target's UTF-8 bytes (bits per byte)."""
  n = num_eval_windows(split, block_size)
  rows = pipeline.process_rows(batch_size, process_index, process_count)
  for first in range(0, n, batch_size):
    idx = np.arange(first, first + batch_size)[rows]
    batch = stack([window(split, int(min(i, n - 1)) * block_size, block_size, packing)
                   for i in idx])
    batch['mask'] = (idx < n).astype(np.float32)
    weights = batch['target_mask'] * batch['mask'][:, None]
    batch['target_bytes'] = (bytes_table[batch['targets']] * weights).astype(np.float32)
    yield batch


def meta(config: ml_collections.ConfigDict, tokenizer: Tokenizer | None) -> Meta:
  return Meta(task='lm', vocab_size=tokenizer.vocab_size, block_size=config.data.block_size)


def check_config(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
  check_positive(config, 'data.block_size', 'data.corpus.shard_tokens')
  check_choice(config, 'data.corpus.verify', VERIFY)
  if 'tokenizer' in config.data.corpus:  # The key before data.tokenizer served every dataset.
    raise ConfigError('config.data.corpus.tokenizer is no key: the tokenizer is '
                      'config.data.tokenizer (docs/data.md, "Tokenizers").')
  tokenizers.check_choice(config.data.tokenizer, CharVocab.KIND, workdir)
  if not config.data.corpus.train_files:
    raise ConfigError('config.data.corpus.train_files is empty: name the text files (a glob, '
                      'or several separated by commas).')
  # Globbed and read with plain file calls, the shards by positional reads: local files only.
  c = config.data.corpus
  for key, value in (('train_files', c.train_files), ('eval_files', c.eval_files),
                     ('cache_dir', cache_dir(config))):
    if any(not paths.is_local(v.strip()) for v in value.split(',')):
      raise ConfigError(f'config.data.corpus.{key}={value!r} is a URI; a corpus reads its files '
                        'and token shards locally (copy them to a local disk; cache_dir defaults '
                        'to <data.data_dir>/lm_corpus).')


def open_dataset(config: ml_collections.ConfigDict,
                 workdir: str | None) -> tuple[corpus.Corpus, Tokenizer]:
  """The tokenized corpus (built now if needed) and its tokenizer, every shard checked."""
  check_config(config, workdir)
  c = config.data.corpus
  files = sources(config)
  tokenizer = get_tokenizer(config, workdir, files)
  folder = corpus_build.build(cache_dir(config), files, tokenizer, c.separator, c.eval_fraction,
                              c.shard_tokens)
  data = corpus.open_corpus(folder, c.verify)
  block_size = config.data.block_size
  for name, split in data.splits.items():
    if split.num_tokens <= block_size:
      raise ConfigError(f'config.data.block_size={block_size} is not shorter than the corpus\'s '
                        f'{name} split ({split.num_tokens} tokens).')
  return data, tokenizer


def get_dataset(config: ml_collections.ConfigDict, process_index: int, process_count: int,
                workdir: str | None = None) -> spec.Dataset:
  data, tokenizer = open_dataset(config, workdir)
  if workdir and process_index == 0 and not os.path.exists(os.path.join(workdir, VOCAB_FILE)):
    tokenizer.save(os.path.join(workdir, VOCAB_FILE))  # Only once every check passed.
  train, evals = data.splits['train'], data.splits['eval']
  packing, block_size = bool(config.data.packing), config.data.block_size
  bytes_table = token_bytes(tokenizer)
  return spec.Dataset(
      train_batch=functools.partial(
          train_windows, train, seed=config.seed, batch_size=config.batch_size,
          block_size=block_size, packing=packing, process_index=process_index,
          process_count=process_count),
      eval_batches=lambda: eval_batches(
          evals, block_size=block_size, batch_size=config.eval_batch_size, packing=packing,
          bytes_table=bytes_table, process_index=process_index, process_count=process_count),
      num_eval_examples=num_eval_windows(evals, block_size),
      meta=meta(config, tokenizer),
      tokenizer=tokenizer)


SPEC = DatasetSpec(NAME, get_dataset, meta, inputs='tokens', tokenizer=spec.ANY_TOKENIZER,
                   preprocess=f'token ids from {VOCAB_FILE} (the corpus\'s tokenizer)')
