"""research/hf: Hugging Face GPT-2 and BERT checkpoints (shared/fixtures/hf) load exactly.

The references were computed by transformers (fixtures README); no torch or transformers here.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_fixture

from research import hf, models
from research.config import model_config
from research.data.spec import Meta
from research.errors import ConfigError
from research.models import decode
from research.transfer import flat_named

TOL = 1e-4


def nested(flat: dict) -> dict:
  out: dict = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def load(name: str, model_name: str, meta: Meta, *example):
  """(model, params, checkpoint folder, reference arrays) of one fixture."""
  path = require_fixture(f'hf/{name}')
  ckpt = hf.open_checkpoint(path)
  cfg = model_config()
  cfg.name = model_name
  cfg, _ = hf.merge_model_config(cfg, hf.model_keys(ckpt.config, path))
  model = models.get_model(cfg, meta)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *example))['params']
  loaded = hf.to_params(ckpt, cfg, {n: tuple(x.shape) for n, x in flat_named(shapes).items()})
  assert not loaded.new and not loaded.left_out, loaded.describe()
  return model, nested(loaded.values), path, dict(np.load(os.path.join(path, 'reference.npz')))


@pytest.fixture(scope='module')
def gpt2():
  return load('gpt2_tiny', 'transformer_lm', Meta(task='lm', vocab_size=512, block_size=64),
              jnp.zeros((1, 8), jnp.int32))


@pytest.fixture(scope='module')
def bert():
  ids = jnp.zeros((1, 8), jnp.int32)
  return load('bert_tiny', 'transformer_encoder_mlm', Meta(task='mlm', vocab_size=2000,
                                                           max_len=128), ids, ids)


def test_gpt2_logits_match_transformers(gpt2):
  model, params, _, ref = gpt2
  logits = model.apply({'params': params}, jnp.asarray(ref['input_ids'], jnp.int32))
  valid = ref['attention_mask'].astype(bool)
  diff = np.abs(np.asarray(logits) - ref['logits'])[valid].max()
  assert diff < TOL, diff


def test_gpt2_greedy_generation_matches_transformers(gpt2):
  model, params, _, ref = gpt2
  prompt = jnp.asarray(ref['greedy_prompt'][None], jnp.int32)
  new = decode.generate(model, params, prompt, jax.random.key(0),
                        num_tokens=len(ref['greedy_ids']) - prompt.shape[1], temperature=0.0)
  np.testing.assert_array_equal(np.concatenate([ref['greedy_prompt'], np.asarray(new[0])]),
                                ref['greedy_ids'])


def test_gpt2_val_loss_matches_transformers(gpt2):
  model, params, _, ref = gpt2
  windows = jnp.asarray(ref['val_windows'], jnp.int32)
  logp = jax.nn.log_softmax(model.apply({'params': params}, windows[:, :-1]))
  loss = -jnp.take_along_axis(logp, windows[:, 1:, None], -1).mean()
  assert abs(float(loss) - float(ref['val_loss'])) < TOL


def test_bert_hidden_states_and_mlm_logits_match_transformers(bert):
  model, params, _, ref = bert
  args = [jnp.asarray(ref[k], jnp.int32) for k in ('input_ids', 'attention_mask')]
  logits, state = model.apply({'params': params}, *args,
                              token_types=jnp.asarray(ref['token_type_ids'], jnp.int32),
                              capture_intermediates=lambda m, _: m.name == 'stack',
                              mutable=['intermediates'])
  hidden = state['intermediates']['stack']['__call__'][0]  # Post-norm: no final norm after it.
  valid = ref['attention_mask'].astype(bool)
  assert np.abs(np.asarray(hidden) - ref['last_hidden_state'])[valid].max() < TOL
  assert np.abs(np.asarray(logits) - ref['mlm_logits'])[valid].max() < TOL


@pytest.mark.parametrize('name', ['gpt2_tiny', 'bert_tiny'])
def test_tokenizer_encodes_the_reference_texts_exactly(name):
  path = require_fixture(f'hf/{name}')
  ref = np.load(os.path.join(path, 'reference.npz'))
  with open(os.path.join(path, 'reference.json')) as f:
    texts = json.load(f)['texts']
  tok = hf.tokenizer(path, hf.open_checkpoint(path).config['vocab_size'])
  for i, text in enumerate(texts):
    n = int(ref['attention_mask'][i].sum())
    np.testing.assert_array_equal(tok.encode(text), ref['input_ids'][i, :n])
  ids, mask, cut = tok.encode_batch(texts, ref['input_ids'].shape[1])
  np.testing.assert_array_equal(mask, ref['attention_mask'])
  np.testing.assert_array_equal(ids * mask, ref['input_ids'] * mask)
  assert cut == 0


def test_gpt2_tokenizer_decodes_the_greedy_text():
  path = require_fixture('hf/gpt2_tiny')
  ref = np.load(os.path.join(path, 'reference.npz'))
  with open(os.path.join(path, 'reference.json')) as f:
    text = json.load(f)['greedy_text']
  assert hf.tokenizer(path).decode(ref['greedy_ids']) == text


@pytest.mark.parametrize('name', ['gpt2_tiny', 'bert_tiny'])
def test_to_hf_reproduces_the_fixture_tensors_bit_for_bit(name, gpt2, bert):
  model, params, path, _ = gpt2 if name == 'gpt2_tiny' else bert
  ckpt = hf.open_checkpoint(path)
  cfg = model_config()
  cfg.name = 'transformer_lm' if name == 'gpt2_tiny' else 'transformer_encoder_mlm'
  cfg, _ = hf.merge_model_config(cfg, hf.model_keys(ckpt.config, path))
  out = hf.to_hf(flat_named(params), cfg)
  assert sorted(out) == sorted(ckpt.tensors)
  for key, tensor in ckpt.tensors.items():
    assert out[key].shape == tensor.shape and out[key].dtype == tensor.dtype, key
    assert out[key].tobytes() == tensor.tobytes(), key


def test_a_shape_that_does_not_fit_names_the_tensor_and_both_shapes():
  path = require_fixture('hf/gpt2_tiny')
  ckpt = hf.open_checkpoint(path)
  cfg = model_config()
  cfg.name = 'transformer_lm'
  cfg, _ = hf.merge_model_config(cfg, hf.model_keys(ckpt.config, path))
  cfg.d_ff = 128
  model = models.get_model(cfg, Meta(task='lm', vocab_size=512, block_size=64))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  with pytest.raises(ConfigError, match=r'transformer.h.0.mlp.c_fc.weight: checkpoint \(64, 256\), '
                     r'this model needs \(64, 128\)'):
    hf.to_params(ckpt, cfg, {n: tuple(x.shape) for n, x in flat_named(shapes['params']).items()})
