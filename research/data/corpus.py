"""Text corpora tokenized once into token shards, read a window at a time (never loaded whole).

Documents: the text between separators (config.data.corpus.separator, a blank line by default),
each keeping its separator at its end, so the shards decoded back to back give the files' text
exactly (with a character tokenizer); the end of a file also ends a document, and separator ''
makes each file one document. One document must fit in memory; the corpus need not.

One tokenized corpus is a folder `<cache_dir>/<key>` (the key hashes the source files' paths,
sizes and mtimes, the tokenizer, the separator, the holdout and the shard size), written once
under a lock and renamed into place whole:
  manifest.json          per split: tokens, documents, UTF-8 bytes; per shard each file's size
                         and sha256 (checked before any compute: a truncated or corrupt shard is
                         a ConfigError)
  vocab.json             the tokenizer the shards were made with
  <split>-NNNNN.tokens   flat token ids, uint16 when the vocabulary fits, else uint32
  <split>-NNNNN.docs     int64: where each document starts in the shard's tokens (a shard holds
                         whole documents)
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np

from research.data import tfds_build
from research.data.tokenizers import FILE as VOCAB_FILE
from research.data.tokenizers import CharVocab, Tokenizer, load_tokenizer
from research.errors import ConfigError

FORMAT = 1
MANIFEST = 'manifest.json'
BLOCK_BYTES = 1 << 24  # Text read and tokenized per block (whole documents; more if one is longer).
HASH_BYTES = 1 << 24
DOC_INDEX_EVERY = 256  # Document starts kept in memory: 1 in 256 (8 MB for 250M documents).
SPLITS = ('train', 'eval')


def resolve_files(patterns: str, key: str) -> list[str]:
  """The files of comma-separated globs, sorted; ConfigError naming `key` when none match."""
  paths = sorted({p for pattern in patterns.split(',') if pattern.strip()
                  for p in glob.glob(os.path.expanduser(pattern.strip())) if os.path.isfile(p)})
  if not paths:
    raise ConfigError(f'config.{key}={patterns!r} matches no file.')
  return paths


def _sha256_text(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def tokenizer_json(tokenizer: Tokenizer) -> str:
  """The tokenizer's saved file as text (what identifies it in the corpus key)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, VOCAB_FILE)
    tokenizer.save(path)
    with open(path, encoding='utf-8') as f:
      return f.read()


def token_bytes(tokenizer: Tokenizer) -> np.ndarray:
  """UTF-8 bytes of each token id (int32, vocab_size): exact for characters; other kinds count
  the bytes of each id decoded alone (Levanter's bits-per-byte convention)."""
  if isinstance(tokenizer, CharVocab):
    return np.array([len(c.encode('utf-8')) for c in tokenizer.chars], np.int32)
  return np.array([len(tokenizer.decode([i]).encode('utf-8'))
                   for i in range(tokenizer.vocab_size)], np.int32)


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# --- Reading the text: blocks of whole documents ---------------------------------------------


def doc_lengths(block: bytes, separator: bytes) -> np.ndarray:
  """Byte lengths of the documents in `block` (each ends after a separator, or at the end)."""
  if not separator:
    return np.array([len(block)], np.int64)
  parts = block.split(separator)
  lengths = np.fromiter(map(len, parts), np.int64, len(parts)) + len(separator)
  lengths[-1] -= len(separator)
  return lengths[lengths > 0] if lengths[-1] == 0 else lengths


def text_blocks(path: str, separator: bytes) -> Iterator[tuple[int, bytes]]:
  """(byte offset in the file, block) of about BLOCK_BYTES, cut after a separator (whole
  documents), the file's end ending the last one."""
  with open(path, 'rb') as f:
    offset, carry = 0, b''
    while True:
      chunk = f.read(BLOCK_BYTES)
      data = carry + chunk
      if not chunk:
        if data:
          yield offset, data
        return
      # After the last separator that str.split finds (left to right, as doc_lengths splits).
      cut = len(data) - len(data.split(separator)[-1]) if separator else 0
      if not cut:  # No whole document yet: read on.
        carry = data
        continue
      yield offset, data[:cut]
      offset, carry = offset + cut, data[cut:]


def holdout_cut(paths: list[str], fraction: float) -> int:
  """The byte position (in the files back to back) from which documents go to the eval split."""
  total = sum(os.path.getsize(p) for p in paths)
  return total - int(round(total * fraction))


def split_documents(paths: list[str], separator: bytes,
                    cut: int | None) -> Iterator[tuple[str, str, bytes, np.ndarray]]:
  """(split, path, block, document byte lengths): documents starting before `cut` (a position in
  the files back to back) are 'train', the rest 'eval'; cut None: all 'train'."""
  base = 0
  for path in paths:
    for offset, block in text_blocks(path, separator):
      lengths = doc_lengths(block, separator)
      starts = base + offset + np.concatenate([[0], np.cumsum(lengths)[:-1]])
      n_train = len(lengths) if cut is None else int(np.sum(starts < cut))
      split_at = int(lengths[:n_train].sum())
      if n_train:
        yield 'train', path, block[:split_at], lengths[:n_train]
      if n_train < len(lengths):
        yield 'eval', path, block[split_at:], lengths[n_train:]
    base += os.path.getsize(path)


def _decode(block: bytes, path: str) -> str:
  try:
    return block.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ConfigError(f'{path} is not UTF-8 text ({e}); a corpus file must be UTF-8.') from e


def encode_block(tokenizer: Tokenizer, block: bytes, lengths: np.ndarray,
                 path: str) -> tuple[np.ndarray, np.ndarray]:
  """(ids, tokens per document) of a block of whole documents.

  Characters are context-free, so a character vocabulary encodes the block in one vectorised
  call (ASCII through a byte lookup table); other tokenizers encode each document alone.
  """
  what = f'text of {path}'
  if isinstance(tokenizer, CharVocab):
    raw = np.frombuffer(block, np.uint8)
    if block.isascii():
      lut = np.full(256, -1, np.int32)
      codes = np.array([ord(c) for c in tokenizer.chars])
      ascii_ids = np.flatnonzero(codes < 128)
      lut[codes[ascii_ids]] = ascii_ids
      ids = lut[raw]
      if (ids < 0).any():
        tokenizer.encode(block.decode('ascii'), what)  # Raises, naming the characters.
      return ids, lengths
    ids = tokenizer.encode(_decode(block, path), what)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # Characters per document: the bytes that start a UTF-8 character.
    return ids, np.add.reduceat((raw & 0xC0) != 0x80, starts).astype(np.int64)
  docs, pos = [], 0
  for n in lengths:
    docs.append(tokenizer.encode(_decode(block[pos:pos + n], path), what))
    pos += n
  return np.concatenate(docs), np.fromiter(map(len, docs), np.int64, len(docs))


def char_vocab(paths: list[str]) -> CharVocab:
  """The characters of the files (one pass, a block at a time; ASCII blocks by byte counts)."""
  chars: set[str] = set()
  for path in paths:
    decoder = codecs.getincrementaldecoder('utf-8')()  # A block may end inside a character.
    with open(path, 'rb') as f:
      while block := f.read(BLOCK_BYTES):
        if block.isascii() and not decoder.getstate()[0]:
          counts = np.bincount(np.frombuffer(block, np.uint8), minlength=128)
          chars.update(map(chr, np.flatnonzero(counts)))
          continue
        try:
          chars.update(decoder.decode(block))
        except UnicodeDecodeError as e:
          raise ConfigError(f'{path} is not UTF-8 text ({e}); a corpus file must be UTF-8.') from e
  return CharVocab(tuple(sorted(chars)))


# --- Writing shards ----------------------------------------------------------------------------


class _HashedFile:
  """A file written in pieces, with its sha256 and size kept as it grows."""

  def __init__(self, path: str):
    self.name, self._f, self._hash, self.size = os.path.basename(path), open(path, 'wb'), \
        hashlib.sha256(), 0

  def write(self, array: np.ndarray) -> None:
    data = array.tobytes()
    self._f.write(data)
    self._hash.update(data)
    self.size += len(data)

  def close(self) -> dict:
    self._f.close()
    return {'file': self.name, 'size': self.size, 'sha256': self._hash.hexdigest()}


class ShardWriter:
  """One split's shards: whole documents, a new shard once one reaches `shard_tokens`."""

  def __init__(self, folder: str, split: str, dtype: np.dtype, shard_tokens: int):
    self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
    self.shards: list[dict] = []
    self._open = None

  def _start(self) -> None:
    stem = os.path.join(self.folder, f'{self.split}-{len(self.shards):05d}')
    self._open = {'tokens': _HashedFile(stem + '.tokens'), 'docs': _HashedFile(stem + '.docs'),
                  'num_tokens': 0, 'num_documents': 0, 'bytes': 0}

  def append(self, ids: np.ndarray, doc_tokens: np.ndarray, num_bytes: int) -> None:
    keep = doc_tokens > 0  # A document with no tokens (e.g. whitespace for a word vocabulary).
    doc_tokens = doc_tokens[keep]
    if not len(doc_tokens):
      return
    if self._open is None:
      self._start()
    shard = self._open
    starts = shard['num_tokens'] + np.concatenate([[0], np.cumsum(doc_tokens)[:-1]])
    shard['tokens'].write(ids.astype(self.dtype))
    shard['docs'].write(starts.astype(np.int64))
    shard['num_tokens'] += len(ids)
    shard['num_documents'] += len(doc_tokens)
    shard['bytes'] += num_bytes
    if shard['num_tokens'] >= self.shard_tokens:
      self.close()

  def close(self) -> list[dict]:
    if self._open is not None:
      shard = self._open
      self.shards.append({'tokens': shard['tokens'].close(), 'docs': shard['docs'].close(),
                          'num_tokens': shard['num_tokens'],
                          'num_documents': shard['num_documents'], 'bytes': shard['bytes']})
      self._open = None
    return self.shards


def write_corpus(folder: str, sources: dict, tokenizer: Tokenizer, separator: str,
                 eval_fraction: float, shard_tokens: int) -> dict:
  """Tokenizes `sources` ({'train': paths, 'eval': paths or []}) into `folder`; the manifest."""
  dtype = token_dtype(tokenizer.vocab_size)
  sep = separator.encode('utf-8')
  writers = {s: ShardWriter(folder, s, dtype, shard_tokens) for s in SPLITS}
  cut = holdout_cut(sources['train'], eval_fraction) if not sources['eval'] else None
  streams = [split_documents(sources['train'], sep, cut)]
  if sources['eval']:
    streams.append(('eval', p, b, n) for _, p, b, n in split_documents(sources['eval'], sep, None))
  for stream in streams:
    for split, path, block, lengths in stream:
      ids, doc_tokens = encode_block(tokenizer, block, lengths, path)
      writers[split].append(ids, doc_tokens, len(block))
  splits = {}
  for split, writer in writers.items():
    shards = writer.close()
    if not shards:
      raise ConfigError(f'The corpus has no {split} documents (files {sources[split] or "held out"}'
                        f', separator {separator!r}); give config.data.corpus.eval_files or a '
                        'larger config.data.corpus.eval_fraction.')
    splits[split] = {k: sum(s[k] for s in shards) for k in ('num_tokens', 'num_documents',
                                                            'bytes')}
    splits[split]['shards'] = shards
  tok_json = tokenizer_json(tokenizer)
  with open(os.path.join(folder, VOCAB_FILE), 'w', encoding='utf-8') as f:
    f.write(tok_json)
  return {'format': FORMAT, 'tokenizer': {'kind': tokenizer.KIND, 'vocab_size':
                                          tokenizer.vocab_size, 'sha256': _sha256_text(tok_json)},
          'dtype': dtype.name, 'separator': separator, 'eval_fraction': eval_fraction,
          'sources': {s: [source_record(p) for p in ps] for s, ps in sources.items()},
          'splits': splits}


def source_record(path: str) -> dict:
  stat = os.stat(path)
  return {'path': os.path.abspath(path), 'bytes': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


def corpus_key(sources: dict, tok_json: str, separator: str, eval_fraction: float,
               shard_tokens: int) -> str:
  """What a tokenized corpus depends on, hashed: a changed file or tokenizer makes a new one."""
  payload = json.dumps({'format': FORMAT, 'sources': {s: [source_record(p) for p in ps]
                                                      for s, ps in sources.items()},
                        'tokenizer': _sha256_text(tok_json), 'separator': separator,
                        'eval_fraction': eval_fraction if not sources['eval'] else None,
                        'shard_tokens': shard_tokens}, sort_keys=True)
  return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build(cache_dir: str, sources: dict, tokenizer: Tokenizer, separator: str,
          eval_fraction: float, shard_tokens: int) -> str:
  """The folder of this corpus, tokenized now unless it already is (once, under a lock, when
  several processes start together)."""
  key = corpus_key(sources, tokenizer_json(tokenizer), separator, eval_fraction, shard_tokens)
  folder = os.path.join(cache_dir, key)
  if os.path.exists(os.path.join(folder, MANIFEST)):
    return folder
  with tfds_build.build_lock(cache_dir, f'lm_corpus-{key}'):
    if os.path.exists(os.path.join(folder, MANIFEST)):
      return folder
    tmp = f'{folder}.incomplete'
    shutil.rmtree(tmp, ignore_errors=True)  # A build killed midway.
    os.makedirs(tmp)
    try:
      manifest = write_corpus(tmp, sources, tokenizer, separator, eval_fraction, shard_tokens)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    with open(os.path.join(tmp, MANIFEST), 'w') as f:
      json.dump(manifest, f, indent=1)
    os.replace(tmp, folder)  # Whole or not at all.
  return folder


# --- Reading shards ----------------------------------------------------------------------------


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
