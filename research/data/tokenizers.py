"""Tokenizers: text <-> int32 ids, saved as one JSON file in a run's workdir (WORKDIR/vocab.json).

Every kind offers the same small interface (`Tokenizer`): `encode(text)`, `decode(ids)`,
`vocab_size`, `save(path)`, and a `KIND` recorded in the saved file as `"type"`, so
`load_tokenizer(path)` can read any of them back. The file formats are those training has always
written ({"type": "char", "chars": [...]}, {"type": "word", "min_count": n, "tokens": [...]}), so
older workdirs stay readable. A Hugging Face `tokenizer.json` (byte-level BPE, WordPiece, ...) is
the kind 'hf', run by the `tokenizers` library and stored whole inside vocab.json
({"type": "hf", "tokenizer": <tokenizer.json>}), so it travels like the others.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import tokenizers as hf_tokenizers

from research.errors import ConfigError

FILE = 'vocab.json'  # The tokenizer's file in a workdir (and in an export).
HF_PREFIX = 'hf:'  # config.init_from=hf:PATH: a Hugging Face checkpoint folder (research/hf).
HF_FILE = 'tokenizer.json'
PAD, UNK, MASK = 0, 1, 2  # WordVocab's reserved ids.
SPECIALS = ('[PAD]', '[UNK]', '[MASK]')


class Tokenizer(Protocol):
  """What sampling, export and inference use of any tokenizer."""

  KIND: str

  @property
  def vocab_size(self) -> int: ...

  def encode(self, text: str, what: str = 'text') -> np.ndarray:
    """int32 ids of `text`; `what` names the text in errors (e.g. 'prompt')."""

  def decode(self, ids) -> str: ...

  def save(self, path: str) -> None: ...


def _write_json(path: str, payload: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f)
  os.replace(tmp, path)  # Atomic: a resumed run never reads half a vocabulary.


@dataclasses.dataclass(frozen=True)
class CharVocab:
  """Characters <-> ids (ids in sorted character order, as nanoGPT)."""

  chars: tuple[str, ...]
  KIND = 'char'

  @classmethod
  def from_text(cls, text: str) -> CharVocab:
    return cls(tuple(sorted(set(text))))

  @classmethod
  def from_json(cls, data: dict) -> CharVocab:
    return cls(tuple(data['chars']))

  @classmethod
  def load(cls, path: str) -> CharVocab:
    with open(path) as f:
      return cls.from_json(json.load(f))

  def save(self, path: str) -> None:
    _write_json(path, {'type': self.KIND, 'chars': list(self.chars)})

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def __len__(self) -> int:
    return len(self.chars)

  def encode(self, text: str, what: str = 'text') -> np.ndarray:
    """int32 ids; characters outside the vocabulary raise ConfigError (naming them)."""
    codes = np.frombuffer(text.encode('utf-32-le'), np.uint32)
    table = np.array([ord(c) for c in self.chars], np.uint32)  # Sorted, so searchsorted works.
    ids = np.minimum(np.searchsorted(table, codes), len(table) - 1)
    unknown = table[ids] != codes
    if unknown.any():
      bad = sorted({chr(c) for c in codes[unknown]})
      raise ConfigError(f'The {what} has {int(unknown.sum())} character(s) outside the '
                        f'{len(self)}-symbol vocabulary: {bad!r}.')
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    return ''.join(self.chars[i] for i in np.asarray(ids).reshape(-1))


@dataclasses.dataclass(frozen=True)
class WordVocab:
  """Whitespace words <-> ids, for pre-tokenized text.

  Ids 0-2 are reserved: [PAD] (padding, never attended), [UNK] (a word outside the vocabulary),
  [MASK] (masked-LM corruption). Words follow by descending count, ties alphabetically, so the
  same text and min count always give the same ids.
  """

  tokens: tuple[str, ...]  # SPECIALS first.
  min_count: int
  KIND = 'word'

  @classmethod
  def from_texts(cls, texts: Iterable[str], min_count: int) -> WordVocab:
    counts = collections.Counter(w for text in texts for w in text.split())
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return cls(SPECIALS + tuple(words), min_count)

  @classmethod
  def from_json(cls, data: dict) -> WordVocab:
    return cls(tuple(data['tokens']), data['min_count'])

  @classmethod
  def load(cls, path: str) -> WordVocab:
    with open(path) as f:
      return cls.from_json(json.load(f))

  def save(self, path: str) -> None:
    _write_json(path, {'type': self.KIND, 'min_count': self.min_count,
                       'tokens': list(self.tokens)})

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def ids(self) -> dict[str, int]:
    return {t: i for i, t in enumerate(self.tokens)}

  def encode(self, text: str, what: str = 'text') -> np.ndarray:
    """int32 ids of the whitespace words; unknown words become [UNK] (`what` is unused)."""
    table = self.ids
    return np.array([table.get(w, UNK) for w in text.split()], np.int32)

  def encode_batch(self, texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids_NxL right-padded with [PAD], 0/1 mask_NxL, number of texts cut at max_len)."""
    table = self.ids
    rows = [[table.get(w, UNK) for w in text.split()] for text in texts]
    ids = np.full((len(rows), max_len), PAD, np.int32)
    for i, row in enumerate(rows):
      ids[i, :min(len(row), max_len)] = row[:max_len]
    mask = (np.arange(max_len)[None, :] < np.array([len(r) for r in rows])[:, None])
    return ids, mask.astype(np.int32), sum(len(r) > max_len for r in rows)

  def decode(self, ids) -> str:
    return ' '.join(self.tokens[i] for i in np.asarray(ids).reshape(-1) if i != PAD)


@dataclasses.dataclass(frozen=True)
class HFTokenizer:
  """A Hugging Face tokenizer.json, through the `tokenizers` library: ids exactly as
  `AutoTokenizer` gives them (special tokens added as the file's post-processor says)."""

  json_text: str  # The tokenizer.json, verbatim, so an export writes back the same file.
  KIND = 'hf'

  @functools.cached_property
  def _tok(self) -> hf_tokenizers.Tokenizer:
    tok = hf_tokenizers.Tokenizer.from_str(self.json_text)
    # A saved file may pad or truncate batches; the data pipeline does both itself, explicitly.
    tok.no_padding()
    tok.no_truncation()
    return tok

  @classmethod
  def from_file(cls, path: str) -> HFTokenizer:
    """A tokenizer.json; ConfigError when it is missing or not one the library reads."""
    if not os.path.exists(path):
      raise ConfigError(f'{path} is missing: a Hugging Face checkpoint needs its tokenizer.json '
                        '(AutoTokenizer.from_pretrained(...).save_pretrained(DIR) writes it).')
    with open(path, encoding='utf-8') as f:
      tok = cls(f.read())
    try:
      tok._tok  # noqa: B018 - parse now, so a bad file fails before any compute.
    except Exception as e:  # noqa: BLE001 - the library raises its own types.
      raise ConfigError(f'{path} is not a tokenizer.json the tokenizers library reads: {e}') from e
    return tok

  @classmethod
  def from_json(cls, data: dict) -> HFTokenizer:
    return cls(data['tokenizer'])

  def save(self, path: str) -> None:
    _write_json(path, {'type': self.KIND, 'tokenizer': self.json_text})

  def save_hf(self, path: str) -> None:
    """The tokenizer.json itself (what from_pretrained reads)."""
    with open(path, 'w', encoding='utf-8') as f:
      f.write(self.json_text)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def encode(self, text: str, what: str = 'text') -> np.ndarray:
    """int32 ids, with the special tokens the file's post-processor adds (`what` unused)."""
    return np.array(self._tok.encode(text).ids, np.int32)

  def encode_batch(self, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids_NxL right-padded with 0, 0/1 mask_NxL, number of texts cut at max_len)."""
    rows = [e.ids for e in self._tok.encode_batch(list(texts))]
    ids = np.zeros((len(rows), max_len), np.int32)
    for i, row in enumerate(rows):
      ids[i, :min(len(row), max_len)] = row[:max_len]
    mask = np.arange(max_len)[None, :] < np.array([len(r) for r in rows])[:, None]
    return ids, mask.astype(np.int32), sum(len(r) > max_len for r in rows)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                            skip_special_tokens=False)


def hf_folder(init_from: str) -> str | None:
  """The folder of `config.init_from=hf:PATH`, or None for any other value."""
  if not init_from.startswith(HF_PREFIX):
    return None
  return os.path.abspath(os.path.expanduser(init_from[len(HF_PREFIX):]))


def hf_tokenizer(init_from: str) -> HFTokenizer | None:
  """The tokenizer.json of an `hf:PATH` init_from (a dataset then uses it), else None."""
  folder = hf_folder(init_from)
  return None if folder is None else HFTokenizer.from_file(os.path.join(folder, HF_FILE))


KINDS: dict[str, type] = {CharVocab.KIND: CharVocab, WordVocab.KIND: WordVocab,
                          HFTokenizer.KIND: HFTokenizer}


def load_tokenizer(path: str, kind: str | None = None) -> Tokenizer:
  """The tokenizer saved at `path`, of the kind its "type" names; ConfigError if it is missing,
  of an unknown kind, or (given `kind`) not of that kind."""
  if not os.path.exists(path):
    raise ConfigError(f'{path} is missing: this needs the tokenizer saved by training '
                      '(--workdir must be the trained run, or its export).')
  with open(path) as f:
    data = json.load(f)
  saved = data.get('type')
  if saved not in KINDS:
    raise ConfigError(f'{path} holds a tokenizer of unknown type {saved!r}; known: '
                      f'{sorted(KINDS)}.')
  if kind is not None and saved not in (kind, HFTokenizer.KIND):  # Any text data takes 'hf'.
    raise ConfigError(f'{path} holds a {saved!r} tokenizer; this dataset uses {kind!r}.')
  return KINDS[saved].from_json(data)
