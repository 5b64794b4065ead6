"""A tokenized corpus on disk: its shard files and manifest, checked, read a window at a time.

One tokenized corpus is a folder `<cache_dir>/<key>` (built once by corpus_build.py; the key
hashes the source files' paths, sizes and mtimes, the tokenizer, the separator, the holdout and
the shard size):
  manifest.json          per split: tokens, documents, UTF-8 bytes; per shard each file's size
                         and sha256 (checked before any compute: a truncated or corrupt shard is
                         a ConfigError)
  vocab.json             the tokenizer the shards were made with
  <split>-NNNNN.tokens   flat token ids, uint16 when the vocabulary fits, else uint32
  <split>-NNNNN.docs     int64: where each document starts in the shard's tokens (a shard holds
                         whole documents)
The shards are never loaded whole: `Split` reads windows by positional reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator

import numpy as np

from research.data.tokenizers import FILE as VOCAB_FILE
from research.data.tokenizers import Tokenizer, load_tokenizer
from research.errors import ConfigError

FORMAT = 1
MANIFEST = 'manifest.json'
HASH_BYTES = 1 << 24
DOC_INDEX_EVERY = 256  # Document starts kept in memory: 1 in 256 (8 MB for 250M documents).
SPLITS = ('train', 'eval')


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:  # Read, not mapped: checking a shard adds nothing to RSS.
    while chunk := f.read(HASH_BYTES):
      h.update(chunk)
  return h.hexdigest()


def check_file(folder: str, record: dict, verify: str) -> str:
  """The path of a shard file; ConfigError if it is missing, of the wrong size, or (verify
  'sha256') its bytes differ from the manifest's."""
  path = os.path.join(folder, record['file'])
  fix = f'Delete {folder} to tokenize the corpus again.'
  if not os.path.exists(path):
    raise ConfigError(f'Corpus shard {path} is missing. {fix}')
  size = os.path.getsize(path)
  if size != record['size']:
    raise ConfigError(f'Corpus shard {path} is truncated or corrupt: {size} bytes, the manifest '
                      f'says {record["size"]}. {fix}')
  if verify == 'sha256' and (actual := _file_sha256(path)) != record['sha256']:
    raise ConfigError(f'Corpus shard {path} is corrupt: sha256 {actual}, the manifest says '
                      f'{record["sha256"]}. {fix}')
  return path


def pread_array(path: str, dtype: np.dtype, start: int, count: int) -> np.ndarray:
  """Items [start, start + count) of a flat array file, by a positional read."""
  with open(path, 'rb') as f:
    data = os.pread(f.fileno(), count * dtype.itemsize, start * dtype.itemsize)
  return np.frombuffer(data, dtype)


def sparse_index(path: str, count: int, every: int) -> np.ndarray:
  """Items 0, every, 2 * every, ... of a flat int64 file, read a block at a time."""
  out, chunk = [], every * (HASH_BYTES // 8 // every)
  for first in range(0, count, chunk):
    out.append(pread_array(path, np.dtype(np.int64), first, min(chunk, count - first))[::every])
  return np.concatenate(out) if out else np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split's shards as one stream of tokens, read a window at a time.

  Positional reads, not a memory map: on Linux 6.x a mapped file's page cache comes in large
  folios, so each random window mapped in ~0.5 MB and the resident size grew toward the corpus
  size (2.6 GB after 300 batches of 12 windows on the 4 GB corpus); a read copies just the window.
  Document starts are found through a sparse index in memory (every DOC_INDEX_EVERY-th start),
  then one read of that stretch of the shard's .docs file.
  """

  token_files: tuple[str, ...]
  doc_files: tuple[str, ...]
  doc_counts: tuple[int, ...]
  doc_index: tuple[np.ndarray, ...]  # Per shard, every DOC_INDEX_EVERY-th document start.
  offsets: np.ndarray  # int64 (num_shards + 1): where each shard starts in the stream.
  dtype: np.dtype
  num_bytes: int  # UTF-8 bytes of the split's text.

  @property
  def num_tokens(self) -> int:
    return int(self.offsets[-1])

  def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """(shard, local start, local stop) covering stream positions [start, stop)."""
    first = max(int(np.searchsorted(self.offsets, start, side='right')) - 1, 0)
    for i in range(first, len(self.token_files)):
      base = int(self.offsets[i])
      if base >= stop:
        return
      yield i, max(start - base, 0), min(stop, int(self.offsets[i + 1])) - base

  def read(self, start: int, length: int) -> np.ndarray:
    """int32 tokens [start, start + length) of the stream (across shards)."""
    pieces = [pread_array(self.token_files[i], self.dtype, a, b - a)
              for i, a, b in self._pieces(start, start + length)]
    return np.concatenate(pieces).astype(np.int32)

  def doc_starts_in(self, start: int, stop: int) -> np.ndarray:
    """Stream positions in [start, stop) where a document starts (int64, ascending)."""
    out = []
    for i, a, b in self._pieces(start, stop):
      index, every = self.doc_index[i], DOC_INDEX_EVERY
      first = max(int(np.searchsorted(index, a, side='right')) - 1, 0) * every
      last = min(int(np.searchsorted(index, b, side='left')) * every, self.doc_counts[i])
      local = pread_array(self.doc_files[i], np.dtype(np.int64), first, last - first)
      lo, hi = np.searchsorted(local, a, side='left'), np.searchsorted(local, b, side='left')
      out.append(local[lo:hi] + int(self.offsets[i]))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class Corpus:
  folder: str
  manifest: dict
  splits: dict[str, Split]

  def tokenizer(self) -> Tokenizer:
    return load_tokenizer(os.path.join(self.folder, VOCAB_FILE))


def read_manifest(folder: str) -> dict:
  path = os.path.join(folder, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} is unreadable ({e}). Delete {folder} to tokenize the corpus '
                      'again.') from e
  if manifest.get('format') != FORMAT:
    raise ConfigError(f'{path} has format {manifest.get("format")!r}, this code reads {FORMAT}. '
                      f'Delete {folder} to tokenize the corpus again.')
  return manifest


def open_corpus(folder: str, verify: str = 'sha256') -> Corpus:
  """The shards of a built corpus, each checked against the manifest (ConfigError) first."""
  manifest = read_manifest(folder)
  dtype = np.dtype(manifest['dtype'])
  splits = {}
  for name, split in manifest['splits'].items():
    shards = split['shards']
    tokens = tuple(check_file(folder, s['tokens'], verify) for s in shards)
    docs = tuple(check_file(folder, s['docs'], verify) for s in shards)
    counts = tuple(s['num_documents'] for s in shards)
    index = tuple(sparse_index(p, n, DOC_INDEX_EVERY) for p, n in zip(docs, counts, strict=True))
    offsets = np.concatenate([[0], np.cumsum([s['num_tokens'] for s in shards])])
    splits[name] = Split(tokens, docs, counts, index, offsets.astype(np.int64), dtype,
                         split['bytes'])
  return Corpus(folder, manifest, splits)
