"""research/data/corpus.py: a built corpus's shards read back (windows, document starts across
shards) and checked on open (a missing, truncated or corrupt shard is one ConfigError)."""

import json
import os

import numpy as np
import pytest
from helpers import CORPUS_TEXTS, build_corpus

from research.data import corpus
from research.errors import ConfigError


@pytest.mark.parametrize('every', [1, 2, 256])  # The sparse index of document starts.
def test_shards_round_trip_with_document_starts(tmp_path, monkeypatch, every):
  monkeypatch.setattr(corpus, 'DOC_INDEX_EVERY', every)
  data, vocab = build_corpus(tmp_path)
  train = data.splits['train']
  assert len(train.token_files) > 2  # shard_tokens=20 cuts the train text into several shards.
  text = ''.join(CORPUS_TEXTS.values())
  assert vocab.decode(train.read(0, train.num_tokens)) == text
  manifest = json.load(open(os.path.join(data.folder, corpus.MANIFEST)))
  assert manifest['splits']['train']['num_tokens'] == len(text)
  assert manifest['splits']['train']['bytes'] == len(text.encode('utf-8'))
  assert manifest['dtype'] == 'uint16'
  # Documents: each keeps its separator; a file's end ends one.
  docs = ['First doc.\nTwo lines.\n\n', 'Second doc\n\n', '\nThird, after a triple newline.',
          'Über den Fluß.\n\n', 'End — fin.\n\n']
  expected = np.cumsum([0] + [len(d) for d in docs[:-1]])
  np.testing.assert_array_equal(train.doc_starts_in(0, train.num_tokens), expected)
  for a in range(0, 90, 7):  # Every [start, stop), within and across shards.
    for b in range(a + 1, 92, 5):
      np.testing.assert_array_equal(train.doc_starts_in(a, b),
                                    expected[(expected >= a) & (expected < b)])
  # A read across a shard boundary.
  np.testing.assert_array_equal(train.read(15, 20), vocab.encode(text[15:35]))


def test_truncated_or_corrupt_shard_is_a_config_error(tmp_path):
  data, _ = build_corpus(tmp_path)
  shard = os.path.join(data.folder, 'train-00001.tokens')
  raw = bytearray(open(shard, 'rb').read())
  open(shard, 'wb').write(bytes(raw[:-2]))  # One token short.
  with pytest.raises(ConfigError, match='train-00001.tokens is truncated or corrupt'):
    corpus.open_corpus(data.folder)
  raw[3] ^= 0xFF  # Same size, one byte changed.
  open(shard, 'wb').write(bytes(raw))
  with pytest.raises(ConfigError, match='train-00001.tokens is corrupt: sha256'):
    corpus.open_corpus(data.folder)
  corpus.open_corpus(data.folder, verify='size')  # Sizes alone cannot see it.
  os.remove(os.path.join(data.folder, 'eval-00000.docs'))
  with pytest.raises(ConfigError, match='eval-00000.docs is missing'):
    corpus.open_corpus(data.folder, verify='size')
