"""Tokenizers: text <-> int32 ids, saved as one JSON file in a run's workdir (WORKDIR/vocab.json).

Every kind offers the same small interface (`Tokenizer`): `encode(text)`, `decode(ids)`,
`vocab_size`, `save(path)`, and a `KIND` recorded in the saved file as `"type"`, so
`load_tokenizer(path)` can read any of them back. The file formats are those training has always
written ({"type": "char", "chars": [...]}, {"type": "word", "min_count": n, "tokens": [...]}), so
older workdirs stay readable. A Hugging Face `tokenizer.json` (byte-level BPE, WordPiece, ...) is
the kind 'hf', run by the `tokenizers` library and stored whole inside vocab.json
({"type": "hf", "tokenizer": <tokenizer.json>}), so it travels like the others. A SentencePiece
model (trained on the corpus, or a `.model` file) is the kind 'sentencepiece', its model proto
stored base64 inside vocab.json ({"type": "sentencepiece", "model": <base64>}).

`config.data.tokenizer` chooses (docs/data.md, "Tokenizers"): '' (the dataset's own kind), 'char',
'word', 'sentencepiece' (trained on the train split, `data.vocab_size` pieces), 'PATH.model' or
'PATH/tokenizer.json'. `get_tokenizer` resolves the choice; a workdir's saved file always wins.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import io
import json
import os
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np
import sentencepiece as spm
import tokenizers as hf_tokenizers

from research import paths
from research.config_checks import suggest
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
  # Atomic (a resumed run never reads half a vocabulary); local or any storage path (paths.py).
  paths.write_text(path, json.dumps(payload))


def _read_json(path: str) -> dict:
  return json.loads(paths.read_text(path))


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
    return cls.from_json(_read_json(path))

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
    return cls.from_json(_read_json(path))

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
    try:
      tok._sp  # noqa: B018 - parse now, so a bad file fails before any compute.
    except Exception as e:  # noqa: BLE001 - the library raises its own types.
      raise ConfigError(f'{path} is not a SentencePiece model: {e}') from e
    return tok

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


def hf_folder(init_from: str) -> str | None:
  """The folder of `config.init_from=hf:PATH`, or None for any other value."""
  if not init_from.startswith(HF_PREFIX):
    return None
  folder = init_from[len(HF_PREFIX):]
  return os.path.abspath(os.path.expanduser(folder)) if paths.is_local(folder) else folder


def hf_tokenizer(init_from: str) -> HFTokenizer | None:
  """The tokenizer.json of an `hf:PATH` init_from (a dataset then uses it), else None."""
  folder = hf_folder(init_from)
  return None if folder is None else HFTokenizer.from_file(paths.join(folder, HF_FILE))


KINDS: dict[str, type] = {CharVocab.KIND: CharVocab, WordVocab.KIND: WordVocab,
                          HFTokenizer.KIND: HFTokenizer, SentencePiece.KIND: SentencePiece}
# Kinds any text dataset takes (a dataset's own kind, 'char' or 'word', is its default).
GENERAL_KINDS = (HFTokenizer.KIND, SentencePiece.KIND)
TRAINED = (CharVocab.KIND, WordVocab.KIND, SentencePiece.KIND)  # config.data.tokenizer names.
FILE_KINDS = {'.model': SentencePiece, '.json': HFTokenizer}  # config.data.tokenizer=PATH.


def load_tokenizer(path: str, kind: str | None = None) -> Tokenizer:
  """The tokenizer saved at `path` (a vocab.json, of the kind its "type" names; also a `.model` or
  a Hugging Face tokenizer.json file as they are); ConfigError if it is missing, of an unknown
  kind, or (given `kind`, a dataset's own) neither of that kind nor a general one."""
  if not paths.exists(path):
    raise ConfigError(f'{path} is missing: this needs the tokenizer saved by training '
                      '(--workdir must be the trained run, or its export).')
  if path.endswith('.model'):
    return SentencePiece.from_file(path)
  data = _read_json(path)
  if 'type' not in data and 'model' in data:  # A tokenizer.json (its "model": BPE, WordPiece...).
    return HFTokenizer.from_file(path)
  saved = data.get('type')
  if saved not in KINDS:
    raise ConfigError(f'{path} holds a tokenizer of unknown type {saved!r}; known: '
                      f'{sorted(KINDS)}.')
  if kind is not None and saved != kind and saved not in GENERAL_KINDS:
    raise ConfigError(f'{path} holds a {saved!r} tokenizer; this dataset uses {kind!r}.')
  return KINDS[saved].from_json(data)


def check_choice(choice: str, own: str, workdir: str | None = None) -> None:
  """ConfigError, before any data is read, for a config.data.tokenizer this dataset cannot use:
  an unknown kind or file extension, a missing file (unless `workdir` has the run's tokenizer
  already: a resumed run needs only its workdir), or the other dataset's built-in kind."""
  if not choice or choice in (own, SentencePiece.KIND):
    return
  ext = os.path.splitext(choice)[1]
  if ext in FILE_KINDS:
    saved = workdir and paths.exists(paths.join(workdir, FILE))
    if not saved and not paths.exists(paths.check(choice, 'config.data.tokenizer')):
      raise ConfigError(f'config.data.tokenizer={choice!r}: no such file.')
    return
  names = [own, SentencePiece.KIND]
  if choice in TRAINED:
    raise ConfigError(f'config.data.tokenizer={choice!r} does not suit this dataset; it takes '
                      f'{names}, a .model file or a tokenizer.json.')
  raise ConfigError(f'config.data.tokenizer={choice!r} is not a tokenizer kind ({names}) nor a '
                    f'file ending in {sorted(FILE_KINDS)}.{suggest(choice, names)}')


def _kind_of(choice: str) -> str:
  """The kind a (checked, non-empty) config.data.tokenizer names."""
  return choice if choice in TRAINED else FILE_KINDS[os.path.splitext(choice)[1]].KIND


def get_tokenizer(choice: str, own: str, build: Callable[[str], Tokenizer], *,
                  workdir: str | None, process_index: int = 0,
                  fallback: Tokenizer | None = None) -> Tokenizer:
  """The run's tokenizer, saved as WORKDIR/vocab.json (by process 0) when new.

  The workdir's saved one wins (a resumed run keeps its ids), then `fallback` (the init_from
  run's or checkpoint's: its params were trained with those ids), then the file `choice` names,
  then `build(kind)` on the train text, kind = `choice` or the dataset's `own`. An explicit
  `choice` that disagrees with a saved or fallback tokenizer's kind is refused.
  """
  check_choice(choice, own, workdir)
  path = paths.join(workdir, FILE) if workdir else None
  saved = load_tokenizer(path, own) if path and paths.exists(path) else None
  for tok, where in ((saved, path), (fallback, 'config.init_from')):
    if tok is not None and choice and tok.KIND != _kind_of(choice):
      raise ConfigError(f'{where} has a {tok.KIND!r} tokenizer but config.data.tokenizer='
                        f'{choice!r}; a run keeps the tokenizer its params were trained with '
                        '(use a new --workdir, or leave config.data.tokenizer empty).')
  if saved is not None:
    return saved
  if fallback is not None:
    tok = fallback
  elif choice and choice not in TRAINED:
    tok = FILE_KINDS[os.path.splitext(choice)[1]].from_file(choice)
  else:
    tok = build(choice or own)
  if path and process_index == 0:
    tok.save(path)
  return tok
