"""research/data/corpus_build.py: text files -> token shards: documents, the holdout, any
tokenizer, built once, bad text refused."""

import os

import numpy as np
import pytest
from helpers import CORPUS_TEXTS, WrappedVocab, build_corpus, write_texts

from research.data import corpus, corpus_build
from research.data.tokenizers import CharVocab
from research.errors import ConfigError


def test_doc_lengths_keep_the_separator():
  sep = b'\n\n'
  block = b'a\n\nbb\n\n\n\ncc'
  lengths = corpus_build.doc_lengths(block, sep)
  assert list(lengths) == [3, 4, 2, 2] and lengths.sum() == len(block)
  assert list(corpus_build.doc_lengths(b'a\n\n', sep)) == [3]
  assert list(corpus_build.doc_lengths(b'abc', b'')) == [3]


def test_any_tokenizer_gives_the_same_shards(tmp_path):
  """The per-document path (any Tokenizer) and the vectorised character path agree."""
  (tmp_path / 'fast').mkdir()
  (tmp_path / 'slow').mkdir()
  fast, vocab = build_corpus(tmp_path / 'fast')
  slow, _ = build_corpus(tmp_path / 'slow', tokenizer=WrappedVocab(vocab))
  a, b = fast.splits['train'], slow.splits['train']
  np.testing.assert_array_equal(a.read(0, a.num_tokens), b.read(0, b.num_tokens))
  np.testing.assert_array_equal(a.doc_starts_in(0, a.num_tokens), b.doc_starts_in(0, b.num_tokens))


def test_holdout_cuts_at_a_document_boundary(tmp_path):
  data, vocab = build_corpus(tmp_path, eval_fraction=0.4)
  train, evals = data.splits['train'], data.splits['eval']
  text = ''.join(CORPUS_TEXTS.values())
  train_text = vocab.decode(train.read(0, train.num_tokens))
  eval_text = vocab.decode(evals.read(0, evals.num_tokens))
  assert train_text + eval_text == text
  assert eval_text.startswith('Über')  # The first document starting in the last 40% of bytes.


def test_built_once_then_reused(tmp_path):
  paths = write_texts(tmp_path)
  data, vocab = build_corpus(tmp_path, paths=paths)
  stamp = os.stat(os.path.join(data.folder, corpus.MANIFEST)).st_mtime_ns
  again, _ = build_corpus(tmp_path, tokenizer=vocab, paths=paths)
  assert again.folder == data.folder
  assert os.stat(os.path.join(data.folder, corpus.MANIFEST)).st_mtime_ns == stamp


def test_a_changed_source_file_makes_a_new_corpus(tmp_path):
  data, _ = build_corpus(tmp_path)
  changed = {**CORPUS_TEXTS, 'a.txt': CORPUS_TEXTS['a.txt'] + '.'}
  again, _ = build_corpus(tmp_path, paths=write_texts(tmp_path, changed))
  assert again.folder != data.folder


def test_bad_text_is_a_config_error(tmp_path):
  vocab = CharVocab(tuple('abc\n'))
  paths = write_texts(tmp_path, {'x.txt': 'abc\n\nabd'})
  with pytest.raises(ConfigError, match=r"outside the 4-symbol vocabulary: \['d'\]"):
    build_corpus(tmp_path, tokenizer=vocab, paths=paths)
  open(paths[0], 'wb').write(b'ab\xff\n\nc')
  with pytest.raises(ConfigError, match='is not UTF-8'):
    build_corpus(tmp_path, tokenizer=vocab, paths=paths)
  assert not [p for p in os.listdir(tmp_path / 'cache') if not p.startswith('.')]  # No leftovers.


def test_char_vocab_spans_block_boundaries(tmp_path, monkeypatch):
  monkeypatch.setattr(corpus_build, 'BLOCK_BYTES', 3)  # Cuts 'ß' (2 bytes) and '—' (3) in two.
  paths = write_texts(tmp_path)
  assert corpus_build.char_vocab(paths) == CharVocab.from_text(''.join(CORPUS_TEXTS.values()))


def test_small_reads_split_documents_as_the_whole_file(tmp_path, monkeypatch):
  """Blocks cut after the last separator str.split finds, so a '\\n\\n\\n' run or a separator
  across two reads splits as it would in one piece."""
  (tmp_path / 'whole').mkdir()
  whole, _ = build_corpus(tmp_path / 'whole')
  monkeypatch.setattr(corpus_build, 'BLOCK_BYTES', 3)
  (tmp_path / 'small').mkdir()
  small, _ = build_corpus(tmp_path / 'small')
  a, b = whole.splits['train'], small.splits['train']
  np.testing.assert_array_equal(a.doc_starts_in(0, a.num_tokens), b.doc_starts_in(0, b.num_tokens))
  np.testing.assert_array_equal(a.read(0, a.num_tokens), b.read(0, b.num_tokens))
