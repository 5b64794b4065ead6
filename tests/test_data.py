"""research/data: the datasets' batches (MNIST, Tiny Shakespeare windows, SST-2 length buckets
and masked-LM batches). The batch functions all datasets share: tests/test_pipeline.py."""

import json
import math

import jax
import numpy as np
from helpers import LM_VOCAB, init_lm_params, mnist_smoke_config, tiny_lm_config

from research import models
from research.data import get_dataset, get_spec
from research.data.sst2 import bucket_train_batch, mask_tokens
from research.data.tokenizers import MASK, SentencePiece
from research.train_step import loss_sums

VOCAB = 50  # Token ids of the made-up SST-2 rows below.


def test_mnist_shapes_and_eval_padding(data_dir):
  config = mnist_smoke_config(data_dir)
  config.eval_batch_size = 768  # 10000 = 13 * 768 + 16: the last batch is mostly padding.
  ds = get_dataset(config)
  batch = ds.train_batch(0)
  assert batch['inputs'].shape == (128, 28, 28, 1) and batch['inputs'].dtype == np.float32
  assert 0.0 <= batch['inputs'].min() and batch['inputs'].max() <= 1.0
  assert batch['targets'].shape == (128,) and batch['targets'].dtype == np.int32
  evals = list(ds.eval_batches())
  assert len(evals) == 14 and sum(b['mask'].sum() for b in evals) == ds.num_eval_examples == 10000


def test_shakespeare_windows_and_vocab(data_dir, tmp_path):
  config = tiny_lm_config(data_dir)
  dataset = get_dataset(config, workdir=str(tmp_path))
  vocab = dataset.tokenizer
  assert vocab.vocab_size == LM_VOCAB and dataset.meta.task == 'lm'
  assert json.load(open(tmp_path / 'vocab.json'))['chars'] == list(vocab.chars)
  a, b = dataset.train_batch(7), dataset.train_batch(7)
  np.testing.assert_array_equal(a['inputs'], b['inputs'])  # A pure function of (seed, step).
  np.testing.assert_array_equal(a['inputs'][:, 1:], a['targets'][:, :-1])
  assert a['inputs'].shape == (config.batch_size, config.data.block_size)
  batches = list(dataset.eval_batches())
  weights = sum(float((b['target_mask'] * b['mask'][:, None]).sum()) for b in batches)
  assert weights == 55_769  # Every next-character target of the validation split, once.
  # An untrained model predicts about uniformly: loss ~ ln(65).
  model = models.get_model(config.model, dataset.meta)
  params = init_lm_params(model, config.data.block_size)
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, a['inputs'])
  sums = loss_sums(logits, a)
  assert abs(float(sums['loss_sum'] / sums['weight_sum']) - math.log(LM_VOCAB)) < 0.1


def test_shakespeare_with_a_sentencepiece_model_file_reuses_it(data_dir, tmp_path):
  """data.tokenizer=PATH.model: the text tokenized by that model, which is saved in the workdir;
  a resumed run (without the file) and sampling (the spec) read that same tokenizer back.
  Training one on the corpus is tested in tests/test_tokenizers.py (here it would take ~10 s)."""
  model = SentencePiece.train(['ROMEO:\nO, she doth teach the torches to burn bright!\n' * 30], 30)
  model.save_model(str(tmp_path / 'sp.model'))
  config = tiny_lm_config(data_dir)
  config.data.tokenizer = str(tmp_path / 'sp.model')
  workdir = tmp_path / 'run'
  workdir.mkdir()
  dataset = get_dataset(config, workdir=str(workdir))
  vocab = dataset.tokenizer
  assert vocab == model and dataset.meta.vocab_size == 30
  batch = dataset.train_batch(3)
  assert batch['inputs'].max() < 30
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  assert json.load(open(workdir / 'vocab.json'))['type'] == 'sentencepiece'
  (tmp_path / 'sp.model').unlink()  # A resumed run needs only its workdir.
  assert get_dataset(config, workdir=str(workdir)).tokenizer == vocab
  assert get_spec(config).load_tokenizer(str(workdir)) == vocab  # Sampling, export.


def test_length_buckets_and_masked_lm_batches():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 40, 500)
  ids = np.where(np.arange(64)[None] < lengths[:, None], rng.integers(3, VOCAB, (500, 64)), 0)
  arrays = {'inputs': ids.astype(np.int32), 'input_mask': (ids > 0).astype(np.int32),
            'targets': np.arange(500)}
  widths = set()
  for step in range(20):
    batch = bucket_train_batch(arrays, lengths, step, seed=1, batch_size=8, buckets=(16, 32, 64))
    width = batch['inputs'].shape[1]
    widths.add(width)
    assert (lengths[batch['targets']] <= width).all()  # Nothing cut off.
    assert width == 16 or (lengths[batch['targets']] > {32: 16, 64: 32}[width]).all()
    again = bucket_train_batch(arrays, lengths, step, seed=1, batch_size=8, buckets=(16, 32, 64))
    np.testing.assert_array_equal(again['inputs'], batch['inputs'])  # A function of the step.
  assert widths == {16, 32, 64}

  batch = mask_tokens({k: arrays[k][:200] for k in ('inputs', 'input_mask')},
                      np.random.default_rng(1), 0.15, VOCAB)
  used = batch['target_mask'].astype(bool)
  rows = np.arange(200)[:, None]
  np.testing.assert_array_equal(used.sum(1), np.maximum(1, np.round(0.15 * lengths[:200])))
  assert (batch['mlm_positions'][used] < np.broadcast_to(lengths[:200, None], used.shape)[used]
          ).all()  # Only real words are predicted...
  np.testing.assert_array_equal(batch['targets'][used],  # ...against their original ids...
                                arrays['inputs'][:200][rows, batch['mlm_positions']][used])
  changed = batch['inputs'] != arrays['inputs'][:200]
  assert changed.sum() <= used.sum()  # ...and only they are corrupted, mostly to [MASK].
  assert 0.7 < (batch['inputs'][rows, batch['mlm_positions']][used] == MASK).mean() < 0.9
