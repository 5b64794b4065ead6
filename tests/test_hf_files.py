"""research/hf/files.py and configs.py: what a Hugging Face folder must hold, refused clearly."""

import json
import os
import shutil

import pytest
import safetensors.numpy
from conftest import require_fixture

from research import hf
from research.errors import ConfigError


def copy_fixture(tmp_path, name='gpt2_tiny', skip=()):
  src = require_fixture(f'hf/{name}')
  dst = tmp_path / name
  dst.mkdir()
  for f in os.listdir(src):
    if f not in skip:
      shutil.copyfile(os.path.join(src, f), dst / f)
  return dst


def test_a_folder_without_config_json_is_refused(tmp_path):
  path = copy_fixture(tmp_path, skip=('config.json',))
  with pytest.raises(ConfigError, match='config.json is missing'):
    hf.open_checkpoint(str(path))


def test_a_missing_folder_is_refused(tmp_path):
  with pytest.raises(ConfigError, match='no such folder'):
    hf.open_checkpoint(str(tmp_path / 'nope'))


def test_a_folder_without_weights_is_refused(tmp_path):
  path = copy_fixture(tmp_path, skip=('model.safetensors',))
  with pytest.raises(ConfigError, match='has no weights: expected model.safetensors'):
    hf.open_checkpoint(str(path))


def test_pickled_weights_are_refused_with_how_to_convert(tmp_path):
  path = copy_fixture(tmp_path, skip=('model.safetensors',))
  (path / 'pytorch_model.bin').write_bytes(b'not opened')
  with pytest.raises(ConfigError, match=r'pytorch_model.bin.*pickle.*safe_serialization=True'):
    hf.open_checkpoint(str(path))


def test_an_unsupported_architecture_names_the_supported_ones(tmp_path):
  path = copy_fixture(tmp_path)
  config = json.loads((path / 'config.json').read_text())
  config.update(model_type='llama', architectures=['LlamaForCausalLM'])
  (path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ConfigError, match=r"model_type='llama'.*supported: gpt2 .*bert "):
    hf.open_checkpoint(str(path))


def test_an_unsupported_option_is_refused(tmp_path):
  config = json.loads((copy_fixture(tmp_path) / 'config.json').read_text())
  config['scale_attn_by_inverse_layer_idx'] = True
  with pytest.raises(ConfigError, match='scale_attn_by_inverse_layer_idx=True is not supported'):
    hf.model_keys(config, 'x')


def test_a_tokenizer_that_does_not_fit_the_embedding_is_refused():
  path = require_fixture('hf/gpt2_tiny')
  with pytest.raises(ConfigError, match='the tokenizer has 512 tokens but the embedding has 500'):
    hf.tokenizer(path, 500)


def test_sharded_safetensors_read_like_one_file(tmp_path):
  path = copy_fixture(tmp_path, skip=('model.safetensors',))
  whole = hf.open_checkpoint(require_fixture('hf/gpt2_tiny')).tensors
  names = sorted(whole)
  shards = {'model-00001-of-00002.safetensors': names[:10],
            'model-00002-of-00002.safetensors': names[10:]}
  for file, part in shards.items():
    safetensors.numpy.save_file({n: whole[n] for n in part}, str(path / file))
  index = {'metadata': {}, 'weight_map': {n: f for f, part in shards.items() for n in part}}
  (path / 'model.safetensors.index.json').write_text(json.dumps(index))
  sharded = hf.open_checkpoint(str(path)).tensors
  assert sorted(sharded) == names
  assert all(sharded[n].tobytes() == whole[n].tobytes() for n in names)
