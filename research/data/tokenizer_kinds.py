"""The tokenizer kinds: text <-> int32 ids, each saved as one JSON file (WORKDIR/vocab.json).

Every kind offers the same small interface (`Tokenizer`): `encode(text)`, `decode(ids)`,
`vocab_size`, `save(path)`, and a `KIND` recorded in the saved file as `"type"`, so
`tokenizers.load_tokenizer(path)` can read any of them back. The file formats are those training
has always written ({"type": "char", "chars": [...]}, {"type": "word", "min_count": n, "tokens":
[...]}), so older workdirs stay readable. A Hugging Face `tokenizer.json` (byte-level BPE,
WordPiece, ...) is the kind 'hf', run by the `tokenizers` library and stored whole inside
vocab.json ({"type": "hf", "tokenizer": <tokenizer.json>}), so it travels like the others. A
SentencePiece model (trained on the corpus, or a `.model` file) is the kind 'sentencepiece', its
model proto stored base64 inside vocab.json ({"type": "sentencepiece", "model": <base64>}).

Which kind a run uses (config.data.tokenizer) is chosen in research/data/tokenizers.py.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import io
import json
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np
import sentencepiece as spm
import tokenizers as hf_tokenizers

from research import paths
from research.errors import ConfigError

FILE = 'vocab.json'  # The tokenizer's file in a workdir (and in an export).
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
  # Atomic (a resumed run never reads half a vocabulary); local or any storage path (paths.py).
  paths.write_text(path, json.dumps(payload))


def read_json(path: str) -> dict:
  """A saved tokenizer file (a vocab.json or a tokenizer.json) as JSON, local or a URI."""
  return json.loads(paths.read_text(path))


def _parsed(tok: Tokenizer, parse: Callable[[], object], problem: str) -> Tokenizer:
  """`tok` once `parse()` (its library reading the file) worked: a bad file fails before any
  compute, as ConfigError('PROBLEM: the library's message')."""
  try:
    parse()
  except Exception as e:  # noqa: BLE001 - the libraries raise their own types.
    raise ConfigError(f'{problem}: {e}') from e
  return tok


def _pad_rows(rows: list, max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
  """(ids_NxL right-padded with 0 ([PAD]), 0/1 mask_NxL, number of rows cut at max_len)."""
  ids = np.full((len(rows), max_len), PAD, np.int32)
  for i, row in enumerate(rows):
    ids[i, :min(len(row), max_len)] = row[:max_len]
  mask = np.arange(max_len)[None, :] < np.array([len(r) for r in rows])[:, None]
  return ids, mask.astype(np.int32), sum(len(r) > max_len for r in rows)


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
    return cls.from_json(read_json(path))

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
    return cls.from_json(read_json(path))

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
    return _pad_rows([[table.get(w, UNK) for w in text.split()] for text in texts], max_len)

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
    if not paths.exists(path):
      raise ConfigError(f'{path} is missing: a Hugging Face checkpoint needs its tokenizer.json '
                        '(AutoTokenizer.from_pretrained(...).save_pretrained(DIR) writes it).')
    tok = cls(paths.read_text(path))
    return _parsed(tok, lambda: tok._tok, f'{path} is not a tokenizer.json the tokenizers library '
                   'reads')

  @classmethod
  def from_json(cls, data: dict) -> HFTokenizer:
    return cls(data['tokenizer'])

  def save(self, path: str) -> None:
    _write_json(path, {'type': self.KIND, 'tokenizer': self.json_text})

  def save_hf(self, path: str) -> None:
    """The tokenizer.json itself (what from_pretrained reads)."""
    paths.get(path).write_text(self.json_text, encoding='utf-8')

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
    return _pad_rows([e.ids for e in self._tok.encode_batch(list(texts))], max_len)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                            skip_special_tokens=False)


@dataclasses.dataclass(frozen=True)
class SentencePiece:
  """A SentencePiece model (unigram or BPE), trained on the corpus or read from a `.model` file.

  `train` is deterministic (one thread, every sentence, no shuffling: the same text and size give
  the same model proto) and lossless on text of the training characters: no normalization, no
  dummy prefix, whitespace kept, '\\n' a piece of its own. It reserves WordVocab's ids ([PAD]=0,
  [UNK]=1, [MASK]=2), so the padding, word dropout and masked-LM code take it unchanged.
  """

  model: bytes  # The serialized ModelProto (what a .model file holds).
  KIND = 'sentencepiece'

  @functools.cached_property
  def _sp(self) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=self.model)

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> SentencePiece:
    """A unigram model of `vocab_size` pieces over `texts` (each cut into lines, '\\n' kept)."""
    lines = (line for text in texts for line in text.splitlines(keepends=True))
    out = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=lines, model_writer=out, vocab_size=vocab_size, model_type='unigram',
          character_coverage=1.0, normalization_rule_name='identity', add_dummy_prefix=False,
          remove_extra_whitespaces=False, pad_id=PAD, unk_id=UNK, bos_id=-1, eos_id=-1,
          pad_piece=SPECIALS[PAD], unk_piece=SPECIALS[UNK],
          user_defined_symbols=[SPECIALS[MASK], '\n'],
          input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    except RuntimeError as e:  # E.g. "Vocabulary size is too high" for a small corpus.
      raise ConfigError(f'SentencePiece cannot train config.data.vocab_size={vocab_size} pieces '
                        f'on this text: {e}') from e
    return cls(out.getvalue())

  @classmethod
  def from_file(cls, path: str) -> SentencePiece:
    """A `.model` file; ConfigError when it is missing or not a SentencePiece model."""
    if not paths.exists(path):
      raise ConfigError(f'config.data.tokenizer={path!r}: no such SentencePiece model file.')
    tok = cls(paths.get(path).read_bytes())
    return _parsed(tok, lambda: tok._sp, f'{path} is not a SentencePiece model')

  @classmethod
  def from_json(cls, data: dict) -> SentencePiece:
    return cls(base64.b64decode(data['model']))

  def save(self, path: str) -> None:
    _write_json(path, {'type': self.KIND, 'model': base64.b64encode(self.model).decode('ascii')})

  def save_model(self, path: str) -> None:
    """The `.model` file itself (what spm.SentencePieceProcessor(model_file=...) reads)."""
    paths.get(path).write_bytes(self.model)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def __len__(self) -> int:
    return self.vocab_size

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  def token_id(self, token: str) -> int | None:
    i = self._sp.piece_to_id(token)
    return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

  def encode(self, text: str, what: str = 'text') -> np.ndarray:
    """int32 ids; characters the model never saw become its unknown id (`what` unused)."""
    return np.array(self._sp.encode(text), np.int32)

  def encode_batch(self, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids_NxL right-padded with 0, 0/1 mask_NxL, number of texts cut at max_len)."""
    return _pad_rows(self._sp.encode(list(texts)), max_len)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])


def token_bytes(tokenizer: Tokenizer) -> np.ndarray:
  """UTF-8 bytes of each token id (int32, vocab_size): exact for characters; other kinds count
  the bytes of each id decoded alone (Levanter's bits-per-byte convention)."""
  if isinstance(tokenizer, CharVocab):
    return np.array([len(c.encode('utf-8')) for c in tokenizer.chars], np.int32)
  return np.array([len(tokenizer.decode([i]).encode('utf-8'))
                   for i in range(tokenizer.vocab_size)], np.int32)
