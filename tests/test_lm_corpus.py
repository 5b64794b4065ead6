"""research/data/lm_corpus.py: windows of (seed, step) over token shards, per-process rows,
whole-split evaluation with byte counts, packing's segment ids and positions, the tokenizer
chosen by config.data.tokenizer."""

import os

import numpy as np
import pytest
from conftest import require_fixture

from research.config import base_config
from research.data import get_dataset, lm_corpus
from research.data.tokenizers import HFTokenizer
from research.errors import ConfigError

# 40 documents of varied length, blank-line separated.
DOCS = [f'doc {i}: ' + 'abcdefgh'[: i % 8 + 1] * (i % 5 + 1) + '.\n\n' for i in range(40)]


def corpus_config(tmp_path, packing=False, block_size=16):
  path = tmp_path / 'text.txt'
  if not path.exists():
    path.write_text(''.join(DOCS))
  c = base_config()
  c.data.name = 'lm_corpus'
  c.data.block_size = block_size
  c.data.packing = packing
  c.data.corpus.train_files = str(path)
  c.data.corpus.eval_fraction = 0.25
  c.data.corpus.cache_dir = str(tmp_path / 'cache')
  c.data.corpus.shard_tokens = 100  # Several shards, so windows cross shard boundaries.
  c.batch_size, c.eval_batch_size = 8, 8
  return c


def test_train_windows_are_pure_in_seed_and_step(tmp_path):
  ds = get_dataset(corpus_config(tmp_path))
  a, b = ds.train_batch(5), ds.train_batch(5)
  assert set(a) == {'inputs', 'targets'} and a['inputs'].shape == (8, 16)
  np.testing.assert_array_equal(a['inputs'], b['inputs'])
  np.testing.assert_array_equal(a['inputs'][:, 1:], a['targets'][:, :-1])
  assert not np.array_equal(a['inputs'], ds.train_batch(6)['inputs'])
  text = ''.join(DOCS)
  for row in range(8):  # Each window is a real stretch of the text.
    assert ds.tokenizer.decode(np.append(a['inputs'][row], a['targets'][row, -1])) in text


def test_each_process_reads_its_rows(tmp_path):
  config = corpus_config(tmp_path)
  whole = get_dataset(config).train_batch(3)
  parts = [get_dataset(config, i, 2).train_batch(3) for i in range(2)]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_eval_covers_every_target_once_with_its_bytes(tmp_path):
  ds = get_dataset(corpus_config(tmp_path))
  batches = list(ds.eval_batches())
  weights = [b['target_mask'] * b['mask'][:, None] for b in batches]
  targets = np.concatenate([b['targets'][w > 0] for b, w in zip(batches, weights, strict=True)])
  eval_text = ''.join(DOCS)[-len(ds.tokenizer.decode(targets)) - 1:]
  assert eval_text.startswith('doc ')  # The held-out quarter starts at a document.
  assert ds.tokenizer.decode(targets) == eval_text[1:]
  assert sum(b['mask'].sum() for b in batches) == ds.num_eval_examples
  assert sum(b['target_bytes'].sum() for b in batches) == len(eval_text) - 1  # ASCII.


def test_segments_and_positions():
  seg, pos = lm_corpus.segments(np.array([12, 15]), 10, 8)
  np.testing.assert_array_equal(seg, [1, 1, 2, 2, 2, 3, 3, 3])
  np.testing.assert_array_equal(pos, [0, 1, 0, 1, 2, 0, 1, 2])
  seg, pos = lm_corpus.segments(np.array([10]), 10, 3)  # A document starting at the window.
  np.testing.assert_array_equal(seg, [1, 1, 1])
  np.testing.assert_array_equal(pos, [0, 1, 2])


def test_packed_windows_mask_targets_across_documents(tmp_path):
  ds = get_dataset(corpus_config(tmp_path, packing=True, block_size=32))
  batch = ds.train_batch(0)
  plain = get_dataset(corpus_config(tmp_path, block_size=32)).train_batch(0)
  np.testing.assert_array_equal(batch['inputs'], plain['inputs'])  # The same windows.
  for row in range(8):
    text = ds.tokenizer.decode(batch['inputs'][row])
    seg, pos, mask = batch['segment_ids'][row], batch['positions'][row], batch['target_mask'][row]
    for i in range(1, 32):
      new_doc = text[i - 2:i] == '\n\n' and i >= 2 or (i < 2 and seg[i] != seg[i - 1])
      assert (seg[i] == seg[i - 1] + 1) == new_doc and (pos[i] == 0) == new_doc
      assert mask[i - 1] == (not new_doc)  # No target is the first token of another document.
  assert batch['target_mask'].min() == 0 and batch['segment_ids'].max() > 1


def test_truncated_shard_fails_before_the_workdir_changes(tmp_path):
  config = corpus_config(tmp_path)
  get_dataset(config)
  folder = next(p for p in (tmp_path / 'cache').iterdir() if p.is_dir())
  shard = folder / 'train-00000.tokens'
  shard.write_bytes(shard.read_bytes()[:-1])
  workdir = tmp_path / 'run'
  workdir.mkdir()
  with pytest.raises(ConfigError, match='truncated or corrupt'):
    get_dataset(config, workdir=str(workdir))
  assert os.listdir(workdir) == []


def test_tokenizer_saved_in_the_workdir_and_reused(tmp_path):
  config = corpus_config(tmp_path)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  first = get_dataset(config, workdir=str(workdir))
  assert (workdir / 'vocab.json').exists()
  assert get_dataset(config, workdir=str(workdir)).tokenizer == first.tokenizer
  config.data.tokenizer = str(workdir / 'vocab.json')  # A run's saved tokenizer file.
  assert get_dataset(config).tokenizer == first.tokenizer


def test_bad_corpus_config(tmp_path):
  config = corpus_config(tmp_path)
  config.data.corpus.train_files = str(tmp_path / 'nothing*.txt')
  with pytest.raises(ConfigError, match='matches no file'):
    get_dataset(config)
  config = corpus_config(tmp_path, block_size=10_000)
  with pytest.raises(ConfigError, match='block_size=10000 is not shorter'):
    get_dataset(config)


def test_a_subword_tokenizer_counts_the_bytes_of_its_tokens(tmp_path):
  """A byte-level BPE (the gpt2_tiny fixture's tokenizer.json, saved as a vocab.json): documents
  encoded one by one, and the eval's target bytes are the eval text's bytes but the first
  token's (ASCII text, no special tokens added)."""
  tok = HFTokenizer.from_file(os.path.join(require_fixture('hf/gpt2_tiny'), 'tokenizer.json'))
  tok.save(str(tmp_path / 'bpe.json'))
  config = corpus_config(tmp_path)
  config.data.tokenizer = str(tmp_path / 'bpe.json')
  ds = get_dataset(config)
  assert ds.tokenizer.KIND == 'hf' and ds.meta.vocab_size == tok.vocab_size
  batches = list(ds.eval_batches())
  targets = np.concatenate([b['targets'][b['target_mask'] * b['mask'][:, None] > 0]
                            for b in batches])
  eval_bytes = sum(b['target_bytes'].sum() for b in batches)
  assert eval_bytes == len(tok.decode(targets).encode('utf-8'))
  assert eval_bytes > len(targets)  # Some tokens are several bytes: bits/byte < bits/token.


def test_a_sentencepiece_tokenizer_trains_on_the_train_documents_only(tmp_path):
  """data.tokenizer='sentencepiece' (as for every text dataset): trained on the train split's
  documents, so a word only the held-out quarter has is no piece of it."""
  config = corpus_config(tmp_path)
  (tmp_path / 'text.txt').write_text(''.join(DOCS) + 'doc 99: zebra.\n\n')  # In the eval split.
  config.data.tokenizer, config.data.vocab_size = 'sentencepiece', 30
  ds = get_dataset(config)
  assert ds.tokenizer.KIND == 'sentencepiece' and ds.meta.vocab_size == 30
  assert ds.tokenizer.token_id('z') is None
  batch = ds.train_batch(0)
  text = (tmp_path / 'text.txt').read_text()
  assert ds.tokenizer.decode(batch['inputs'][0]) in text


@pytest.mark.parametrize('key, value, message', [
    ('tokenizer', 'word', "'word' does not suit this dataset"),
    ('tokenizer', 'MISSING.model', 'no such file'),
    ('corpus.tokenizer', 'x.json', 'config.data.corpus.tokenizer is no key')])
def test_a_bad_tokenizer_choice_fails_before_the_workdir_changes(tmp_path, key, value, message):
  config = corpus_config(tmp_path)
  section = config.data.corpus if key.startswith('corpus.') else config.data
  section[key.split('.')[-1]] = value.replace('MISSING', str(tmp_path / 'missing'))
  workdir = tmp_path / 'run'
  workdir.mkdir()
  with pytest.raises(ConfigError, match=message):
    get_dataset(config, workdir=str(workdir))
  assert os.listdir(workdir) == [] and not (tmp_path / 'cache').exists()


@pytest.mark.parametrize('key, value', [
    ('data_dir', 'gs://bucket/data'),  # The default cache dir, <data_dir>/lm_corpus.
    ('corpus.cache_dir', 'gs://bucket/cache'),
    ('corpus.train_files', 'gs://bucket/text/*.txt')])
def test_a_uri_for_the_corpus_files_is_one_error(tmp_path, monkeypatch, key, value):
  """Corpus files and shards are read locally: a URI is refused up front (a gs:// data_dir made
  a local folder named 'gs:' before), and nothing is written."""
  monkeypatch.chdir(tmp_path)
  config = corpus_config(tmp_path)
  config.data.corpus.cache_dir = ''
  section = config.data.corpus if key.startswith('corpus.') else config.data
  section[key.split('.')[-1]] = value
  with pytest.raises(ConfigError, match=f'config.data.corpus.[a-z_]+=.*{value[:10]}.* is a URI'):
    get_dataset(config)
  assert sorted(os.listdir(tmp_path)) == ['text.txt']
