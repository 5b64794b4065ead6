"""Text files tokenized once into a corpus folder of token shards (the format: corpus.py).

Documents: the text between separators (config.data.corpus.separator, a blank line by default),
each keeping its separator at its end, so the shards decoded back to back give the files' text
exactly (with a character tokenizer); the end of a file also ends a document, and separator ''
makes each file one document. One document must fit in memory; the corpus need not: the text is
read and tokenized a block of whole documents at a time. The folder is written once under a lock
and renamed into place whole.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np

from research.data import tfds_build
from research.data.corpus import FORMAT, MANIFEST, SPLITS, token_dtype
from research.data.tokenizers import FILE as VOCAB_FILE
from research.data.tokenizers import CharVocab, Tokenizer
from research.errors import ConfigError

BLOCK_BYTES = 1 << 24  # Text read and tokenized per block (whole documents; more if one is longer).


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


def train_text(sources: dict, separator: str, eval_fraction: float) -> Iterator[str]:
  """The train split's text (the documents write_corpus puts there), a block of whole documents
  at a time: what a tokenizer trains on, so none of the held-out eval text is seen."""
  cut = holdout_cut(sources['train'], eval_fraction) if not sources['eval'] else None
  for split, path, block, _ in split_documents(sources['train'], separator.encode('utf-8'), cut):
    if split == 'train':
      yield _decode(block, path)


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
