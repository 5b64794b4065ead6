"""research/data/corpus.py: text -> token shards (memory-mapped) and back, checked on open."""

import dataclasses
import json
import os

import numpy as np
import pytest

from research.data import corpus
from research.data.tokenizers import CharVocab
from research.errors import ConfigError

# Documents separated by blank lines; the second file has non-ASCII characters (2- and 3-byte).
TEXTS = {'a.txt': 'First doc.\nTwo lines.\n\nSecond doc\n\n\nThird, after a triple newline.',
         'b.txt': 'Über den Fluß.\n\nEnd — fin.\n\n'}


@dataclasses.dataclass(frozen=True)
class Wrapped:
  """Any tokenizer that is not a CharVocab: the per-document path (a CharVocab inside)."""

  inner: CharVocab
  KIND = 'char'

  @property
  def vocab_size(self):
    return self.inner.vocab_size

  def encode(self, text, what='text'):
    return self.inner.encode(text, what)

  def decode(self, ids):
    return self.inner.decode(ids)

  def save(self, path):
    self.inner.save(path)


def write_texts(folder, texts=TEXTS):
  paths = []
  for name, text in texts.items():
    paths.append(str(folder / name))
    with open(paths[-1], 'w', encoding='utf-8') as f:
      f.write(text)
  return paths


def build(tmp_path, tokenizer=None, shard_tokens=20, eval_fraction=0.0, paths=None,
          separator='\n\n'):
  paths = paths or write_texts(tmp_path)
  tokenizer = tokenizer or corpus.char_vocab(paths)
  sources = {'train': paths, 'eval': paths[-1:] if not eval_fraction else []}
  folder = corpus.build(str(tmp_path / 'cache'), sources, tokenizer, separator, eval_fraction,
                        shard_tokens)
  return corpus.open_corpus(folder), tokenizer


def test_doc_lengths_keep_the_separator():
  sep = b'\n\n'
  block = b'a\n\nbb\n\n\n\ncc'
  lengths = corpus.doc_lengths(block, sep)
  assert list(lengths) == [3, 4, 2, 2] and lengths.sum() == len(block)
  assert list(corpus.doc_lengths(b'a\n\n', sep)) == [3]
  assert list(corpus.doc_lengths(b'abc', b'')) == [3]


@pytest.mark.parametrize('every', [1, 2, 256])  # The sparse index of document starts.
def test_shards_round_trip_with_document_starts(tmp_path, monkeypatch, every):
  monkeypatch.setattr(corpus, 'DOC_INDEX_EVERY', every)
  data, vocab = build(tmp_path)
  train = data.splits['train']
  assert len(train.token_files) > 2  # shard_tokens=20 cuts the train text into several shards.
  text = ''.join(TEXTS.values())
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


def test_any_tokenizer_gives_the_same_shards(tmp_path):
  """The per-document path (any Tokenizer) and the vectorised character path agree."""
  (tmp_path / 'fast').mkdir()
  (tmp_path / 'slow').mkdir()
  fast, vocab = build(tmp_path / 'fast')
  slow, _ = build(tmp_path / 'slow', tokenizer=Wrapped(vocab))
  a, b = fast.splits['train'], slow.splits['train']
  np.testing.assert_array_equal(a.read(0, a.num_tokens), b.read(0, b.num_tokens))
  np.testing.assert_array_equal(a.doc_starts_in(0, a.num_tokens), b.doc_starts_in(0, b.num_tokens))


def test_holdout_cuts_at_a_document_boundary(tmp_path):
  data, vocab = build(tmp_path, eval_fraction=0.4)
  train, evals = data.splits['train'], data.splits['eval']
  text = ''.join(TEXTS.values())
  train_text = vocab.decode(train.read(0, train.num_tokens))
  eval_text = vocab.decode(evals.read(0, evals.num_tokens))
  assert train_text + eval_text == text
  assert eval_text.startswith('Über')  # The first document starting in the last 40% of bytes.


def test_built_once_then_reused(tmp_path):
  paths = write_texts(tmp_path)
  data, vocab = build(tmp_path, paths=paths)
  stamp = os.stat(os.path.join(data.folder, corpus.MANIFEST)).st_mtime_ns
  again, _ = build(tmp_path, tokenizer=vocab, paths=paths)
  assert again.folder == data.folder
  assert os.stat(os.path.join(data.folder, corpus.MANIFEST)).st_mtime_ns == stamp


def test_a_changed_source_file_makes_a_new_corpus(tmp_path):
  data, _ = build(tmp_path)
  again, _ = build(tmp_path, paths=write_texts(tmp_path, {**TEXTS, 'a.txt': TEXTS['a.txt'] + '.'}))
  assert again.folder != data.folder


def test_truncated_or_corrupt_shard_is_a_config_error(tmp_path):
  data, _ = build(tmp_path)
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


def test_bad_text_is_a_config_error(tmp_path):
  vocab = CharVocab(tuple('abc\n'))
  paths = write_texts(tmp_path, {'x.txt': 'abc\n\nabd'})
  with pytest.raises(ConfigError, match=r"outside the 4-symbol vocabulary: \['d'\]"):
    build(tmp_path, tokenizer=vocab, paths=paths)
  open(paths[0], 'wb').write(b'ab\xff\n\nc')
  with pytest.raises(ConfigError, match='is not UTF-8'):
    build(tmp_path, tokenizer=vocab, paths=paths)
  assert not [p for p in os.listdir(tmp_path / 'cache') if not p.startswith('.')]  # No leftovers.


def test_char_vocab_spans_block_boundaries(tmp_path, monkeypatch):
  monkeypatch.setattr(corpus, 'BLOCK_BYTES', 3)  # Cuts 'ß' (2 bytes) and '—' (3) in two.
  paths = write_texts(tmp_path)
  assert corpus.char_vocab(paths) == CharVocab.from_text(''.join(TEXTS.values()))


def test_token_bytes_are_utf8_lengths():
  vocab = CharVocab(tuple('aß—'))
  np.testing.assert_array_equal(corpus.token_bytes(vocab), [1, 2, 3])
  np.testing.assert_array_equal(corpus.token_bytes(Wrapped(vocab)), [1, 2, 3])


def test_small_reads_split_documents_as_the_whole_file(tmp_path, monkeypatch):
  """Blocks cut after the last separator str.split finds, so a '\\n\\n\\n' run or a separator
  across two reads splits as it would in one piece."""
  (tmp_path / 'whole').mkdir()
  whole, _ = build(tmp_path / 'whole')
  monkeypatch.setattr(corpus, 'BLOCK_BYTES', 3)
  (tmp_path / 'small').mkdir()
  small, _ = build(tmp_path / 'small')
  a, b = whole.splits['train'], small.splits['train']
  np.testing.assert_array_equal(a.doc_starts_in(0, a.num_tokens), b.doc_starts_in(0, b.num_tokens))
  np.testing.assert_array_equal(a.read(0, a.num_tokens), b.read(0, b.num_tokens))
