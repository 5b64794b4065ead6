"""Choosing and loading a run's tokenizer by config; the kinds are research/data/tokenizer_kinds.py.

`config.data.tokenizer` chooses (docs/data.md, "Tokenizers"): '' (the dataset's own kind), 'char',
'word', 'sentencepiece' (trained on the train split, `data.vocab_size` pieces), 'PATH.model' or
'PATH/tokenizer.json'. `get_tokenizer` resolves the choice; a workdir's saved file always wins.
`load_tokenizer` reads any saved kind back. The kinds are imported from here by the datasets, so
this module is the one place they take tokenizers from.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from research import paths
from research.config_checks import suggest
from research.data.tokenizer_kinds import (
  FILE,
  HF_FILE,
  MASK,
  PAD,
  SPECIALS,
  UNK,
  CharVocab,
  HFTokenizer,
  SentencePiece,
  Tokenizer,
  WordVocab,
  read_json,
  token_bytes,
)
from research.errors import ConfigError

__all__ = [  # The kinds, re-exported: datasets import every tokenizer name from here.
    'FILE', 'HF_FILE', 'HF_PREFIX', 'MASK', 'PAD', 'SPECIALS', 'UNK', 'CharVocab', 'HFTokenizer',
    'SentencePiece', 'Tokenizer', 'WordVocab', 'token_bytes', 'KINDS', 'GENERAL_KINDS',
    'TRAINED', 'FILE_KINDS', 'hf_folder', 'hf_tokenizer', 'load_tokenizer', 'check_choice',
    'get_tokenizer']

HF_PREFIX = 'hf:'  # config.init_from=hf:PATH: a Hugging Face checkpoint folder (research/hf).


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
# config.data.tokenizer=PATH: a .model, or a .json (a tokenizer.json or a saved vocab.json).
FILE_KINDS = {'.model': SentencePiece, '.json': HFTokenizer}


def load_tokenizer(path: str, kind: str | None = None) -> Tokenizer:
  """The tokenizer saved at `path` (a vocab.json, of the kind its "type" names; also a `.model` or
  a Hugging Face tokenizer.json file as they are); ConfigError if it is missing, of an unknown
  kind, or (given `kind`, a dataset's own) neither of that kind nor a general one."""
  if not paths.exists(path):
    raise ConfigError(f'{path} is missing: this needs the tokenizer saved by training '
                      '(--workdir must be the trained run, or its export).')
  if path.endswith('.model'):
    return SentencePiece.from_file(path)
  try:
    data = read_json(path)
  except ValueError as e:
    raise ConfigError(f'{path} is not a tokenizer file (not JSON: {e}).') from e
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


def _kind_of(choice: str, own: str) -> str | None:
  """The kind a (checked, non-empty) config.data.tokenizer names; a file's own "type" (a .json may
  be a tokenizer.json or any saved vocab.json), None when the file is gone (a resumed run)."""
  if choice in TRAINED:
    return choice
  return load_tokenizer(choice, own).KIND if paths.exists(choice) else None


def get_tokenizer(choice: str, own: str, build: Callable[[str], Tokenizer], *,
                  workdir: str | None, process_index: int = 0,
                  fallback: Tokenizer | None = None, save: bool = True) -> Tokenizer:
  """The run's tokenizer, saved as WORKDIR/vocab.json (by process 0) when new, unless `save` is
  False (the caller saves it once its data checks pass).

  The workdir's saved one wins (a resumed run keeps its ids), then `fallback` (the init_from
  run's or checkpoint's: its params were trained with those ids), then the file `choice` names
  (a .model, a tokenizer.json, or a saved vocab.json of `own`'s or a general kind), then
  `build(kind)` on the train text, kind = `choice` or the dataset's `own`. An explicit
  `choice` that disagrees with a saved or fallback tokenizer's kind is refused.
  """
  check_choice(choice, own, workdir)
  path = paths.join(workdir, FILE) if workdir else None
  saved = load_tokenizer(path, own) if path and paths.exists(path) else None
  for tok, where in ((saved, path), (fallback, 'config.init_from')):
    if tok is not None and choice and tok.KIND != (_kind_of(choice, own) or tok.KIND):
      raise ConfigError(f'{where} has a {tok.KIND!r} tokenizer but config.data.tokenizer='
                        f'{choice!r}; a run keeps the tokenizer its params were trained with '
                        '(use a new --workdir, or leave config.data.tokenizer empty).')
  if saved is not None:
    return saved
  if fallback is not None:
    tok = fallback
  elif choice and choice not in TRAINED:
    tok = load_tokenizer(choice, own)
  else:
    tok = build(choice or own)
  if path and process_index == 0 and save:
    tok.save(path)
  return tok
