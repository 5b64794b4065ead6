"""research/data/tokenizer_kinds.py: each kind encodes and decodes as training needs (SentencePiece
trained deterministically, lossless on its text) and counts the UTF-8 bytes of its tokens."""

import json

import numpy as np
import pytest
from helpers import SPEECHES as TEXT
from helpers import WrappedVocab

from research.data import tokenizer_kinds, tokenizers
from research.data.tokenizer_kinds import MASK, PAD, SPECIALS, UNK, CharVocab, SentencePiece
from research.errors import ConfigError


def test_sentencepiece_trains_deterministically_and_round_trips_text(tmp_path):
  """Same text and size, same model bytes; decode(encode(text)) is the text, newlines and runs
  of spaces included; WordVocab's reserved ids; saved in vocab.json and loaded back equal."""
  a = SentencePiece.train([TEXT], 40)
  assert a.model == SentencePiece.train([TEXT], 40).model
  assert a.vocab_size == 40
  assert [a.token_id(t) for t in SPECIALS] == [PAD, UNK, MASK]
  for text in (TEXT, 'Speak,  speak.\n\n'):
    assert a.decode(a.encode(text)) == text
  assert len(a.encode(TEXT)) < len(TEXT)  # Subwords, not characters.
  # Bits per byte counts each piece's bytes: they add up to the text's exactly.
  assert tokenizer_kinds.token_bytes(a)[a.encode(TEXT)].sum() == len(TEXT.encode())
  a.save(str(tmp_path / 'vocab.json'))
  assert json.loads((tmp_path / 'vocab.json').read_text())['type'] == 'sentencepiece'
  # Any text dataset takes it.
  assert tokenizers.load_tokenizer(str(tmp_path / 'vocab.json'), 'char') == a
  a.save_model(str(tmp_path / 'x.model'))
  assert SentencePiece.from_file(str(tmp_path / 'x.model')) == a
  assert tokenizers.load_tokenizer(str(tmp_path / 'x.model')) == a
  ids, mask, cut = a.encode_batch(['All:', TEXT], max_len=8)
  assert ids.shape == (2, 8) and cut == 1 and mask[0].sum() == len(a.encode('All:'))
  with pytest.raises(ConfigError, match='cannot train config.data.vocab_size=100000'):
    SentencePiece.train([TEXT], 100_000)


def test_token_bytes_are_utf8_lengths():
  vocab = CharVocab(tuple('aß—'))
  np.testing.assert_array_equal(tokenizer_kinds.token_bytes(vocab), [1, 2, 3])
  np.testing.assert_array_equal(tokenizer_kinds.token_bytes(WrappedVocab(vocab)), [1, 2, 3])
