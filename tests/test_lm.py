"""Decoder-only LM: causality, KV-cache decoding, Tiny Shakespeare data, training and sampling."""

import functools
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_launch

import experiments.shakespeare_char as shakespeare_char
from research import models
from research.data import get_dataset
from research.data.spec import Meta
from research.errors import ConfigError
from research.models.decode import generate, window_keep
from research.train import train_and_evaluate
from research.train_step import loss_sums

VOCAB = 65
CONFIG = 'experiments/shakespeare_char.py:tiny'


def tiny_config(data_dir=None, **model):
  config = shakespeare_char.get_config('tiny')
  if data_dir:
    config.data.data_dir = data_dir
  config.model.update(model)
  return config


def init_params(model, length, seed=0):
  tokens = jnp.zeros((1, length), jnp.int32)
  init = jax.jit(lambda: nn.unbox(model.init(jax.random.key(seed), tokens, train=False)['params']))
  return init()


# Plain multi-head attention with learned positions, and grouped-query attention (2 query heads
# per KV head) with rotary positions, scanned and rematerialized layers. A wide init spreads the
# logits, so greedy choices in the cache test are not float-noise ties.
VARIANTS = {
    'mha_learned': {},
    'gqa_rotary_scan': {'positions': 'rotary', 'num_heads': 4, 'num_kv_heads': 2,
                        'scan_layers': True, 'remat': 'full'},
}


@functools.cache
def model_and_params(variant):
  config = tiny_config(max_len=16, init_std=0.5, **VARIANTS[variant])
  model = models.get_model(config.model, Meta(task='lm', vocab_size=VOCAB, block_size=16))
  return model, init_params(model, 16)


@pytest.mark.parametrize('variant', VARIANTS)
def test_future_tokens_do_not_change_earlier_logits(variant):
  model, params = model_and_params(variant)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, VOCAB)
  changed = tokens.at[:, 9].set((tokens[:, 9] + 7) % VOCAB)
  logits = jax.jit(lambda t: model.apply({'params': params}, t, train=False))(
      jnp.concatenate([tokens, changed]))
  before, after = logits[:2], logits[2:]
  np.testing.assert_array_equal(before[:, :9], after[:, :9])
  assert np.abs(before[:, 9:] - after[:, 9:]).max() > 1e-3  # The change is seen from there on.


def reference_choice(logits_V, key, temperature, top_k):
  """What a sampler should do, the cut written out in numpy: argmax at temperature 0, else keep the
  top_k largest logits (ties with the k-th kept; 0 = all) over the temperature and draw with
  jax.random.categorical under the same key."""
  if temperature == 0:
    return int(np.argmax(logits_V))
  scaled = np.asarray(logits_V, np.float32) / np.float32(temperature)
  if 0 < top_k < len(scaled):
    scaled = np.where(scaled < np.sort(scaled)[-top_k], -np.inf, scaled)
  return int(jax.random.categorical(key, jnp.asarray(scaled)[None])[0])


def uncached_generate(model, params, prompt, num_tokens, rng, temperature=0.0, top_k=0):
  """Reference: a full forward pass per token over the same context window the cache keeps, the
  i-th token drawn with fold_in(rng, i) as `generate` does. Also each token's rank among the
  logits it was drawn from (0 = the argmax)."""
  max_len, keep = model.cfg.max_len, window_keep(model.cfg.max_len)
  forward = jax.jit(lambda t: model.apply({'params': params}, t, train=False))
  seq = list(np.asarray(prompt[0, -max_len:]))
  filled, out, ranks = len(seq), [], []
  for i in range(num_tokens):
    context = seq[-filled:]
    padded = np.zeros((1, max_len), np.int32)  # Right padding: causal, so it is never seen.
    padded[0, :len(context)] = context
    logits_V = np.asarray(forward(padded)[0, len(context) - 1])
    token = reference_choice(logits_V, jax.random.fold_in(rng, i), temperature, top_k)
    out.append(token)
    ranks.append(int((logits_V > logits_V[token]).sum()))
    seq.append(token)
    filled = keep if filled == max_len else filled + 1
  return out, ranks


SAMPLING = {  # name: (temperature, top_k)
    'greedy': (0.0, 0),
    'top_k': (0.8, 5),
    'temperature': (1.5, 0),
}


@pytest.mark.parametrize('sampling', SAMPLING)
@pytest.mark.parametrize('variant', VARIANTS)
def test_cached_generation_matches_uncached(variant, sampling):
  model, params = model_and_params(variant)
  temperature, top_k = SAMPLING[sampling]
  prompt = np.array([[5, 17, 42, 8, 30]], np.int32)
  num_tokens = 30  # Past max_len: the cache is rebuilt from a sliding window twice.
  rng = jax.random.key(4)
  cached = jax.jit(lambda p, x: generate(model, p, x, rng, num_tokens=num_tokens,
                                         temperature=temperature, top_k=top_k))(params, prompt)
  expected, ranks = uncached_generate(model, params, prompt, num_tokens, rng, temperature, top_k)
  assert list(np.asarray(cached[0])) == expected
  assert len(set(expected)) > 3  # A real sequence, not one repeated token.
  if sampling == 'greedy':
    assert max(ranks) == 0
  else:  # Really sampled: not always the argmax; within the top k when cut.
    assert max(ranks) > 0
    assert max(ranks) < (top_k or VOCAB)


@pytest.mark.parametrize('model_options, message', [
    ({'d_model': 30, 'num_heads': 4}, 'not divisible by config.model.num_heads'),
    ({'num_heads': 4, 'num_kv_heads': 3}, 'num_kv_heads=3'),
    ({'max_len': 16}, 'block_size=32 is larger than config.model.max_len=16'),
    ({'norm': 'batchnorm'}, 'is not one of'),
])
def test_bad_model_config_fails_before_compute(model_options, message):
  config = tiny_config(**model_options)
  with pytest.raises(ConfigError, match=message):
    models.get_model(config.model,
                     Meta(task='lm', vocab_size=VOCAB, block_size=config.data.block_size))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('lm'))
  summary = train_and_evaluate(tiny_config(data_dir), workdir)
  return workdir, summary


def test_data_windows_and_vocab(data_dir, tmp_path):
  config = tiny_config(data_dir)
  dataset = get_dataset(config, workdir=str(tmp_path))
  vocab = dataset.tokenizer
  assert vocab.vocab_size == VOCAB and dataset.meta.task == 'lm'
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
  params = init_params(model, config.data.block_size)
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, a['inputs'])
  sums = loss_sums(logits, a)
  assert abs(float(sums['loss_sum'] / sums['weight_sum']) - math.log(VOCAB)) < 0.1


def test_short_run_lowers_validation_loss(trained):
  workdir, summary = trained
  evals = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))
           if json.loads(line)['split'] == 'eval']
  assert summary['num_targets'] == 55_769
  assert evals[-1]['loss'] < math.log(VOCAB) - 0.7  # 4.17 -> ~3.1 measured in 60 steps.
  assert evals[-1]['loss'] < evals[0]['loss']
  assert evals[-1]['bits_per_char'] == pytest.approx(evals[-1]['loss'] / math.log(2))
  samples = open(os.path.join(workdir, 'samples.txt')).read()
  assert samples.count('--- step') == len(evals)


def test_sampling_from_checkpoint_in_fresh_process(trained):
  workdir, _ = trained
  result = run_launch([f'--config={CONFIG}', f'--workdir={workdir}', '--mode=sample',
                       '--prompt=ROMEO:', '--num_tokens=40', '--seed=3'])
  assert result.returncode == 0, result.stderr[-2000:]
  text = result.stdout.rstrip('\n')
  assert text.startswith('ROMEO:') and len(text) >= len('ROMEO:') + 39
  chars = set(json.load(open(os.path.join(workdir, 'vocab.json')))['chars'])
  assert set(text) <= chars


def test_a_bad_sample_prompt_fails_before_training_writes_anything(data_dir, tmp_path):
  result = run_launch([f'--config={CONFIG}', f'--workdir={tmp_path}',
                       f'--config.data.data_dir={data_dir}', '--config.sample.prompt=ROMEO<3'])
  assert result.returncode == 2, result.stderr[-2000:]
  assert "error: The prompt has 1 character(s) outside the 65-symbol vocabulary: ['<']" in \
      result.stderr
  assert not (tmp_path / 'config.json').exists() and not (tmp_path / 'checkpoints').exists()


def test_sampling_bad_input_fails_clearly(trained, tmp_path):
  workdir, _ = trained
  result = run_launch([f'--config={CONFIG}', f'--workdir={workdir}', '--mode=sample',
                       '--prompt=ROMEO<3'])
  assert result.returncode != 0 and "outside the 65-symbol vocabulary: ['<']" in result.stderr
  result = run_launch([f'--config={CONFIG}', f'--workdir={tmp_path}', '--mode=sample'])
  assert result.returncode != 0 and 'No checkpoint in' in result.stderr
