"""research/config.py: each model key has its one default in base_config(), and every experiment
preset loads and takes command-line model overrides of its type."""

import ast
import glob
import os

import pytest
from absl import flags
from conftest import REPO
from ml_collections import config_flags

from research import config as configs
from research import models
from research.config_checks import check_model


def _config_reads(path):
  """(attribute reads, .get calls) on every `cfg: ml_collections.ConfigDict` argument in path."""
  reads, gets = set(), []
  for fn in ast.walk(ast.parse(open(path).read())):
    if not isinstance(fn, ast.FunctionDef):
      continue
    if not any(a.arg == 'cfg' and 'ConfigDict' in ast.unparse(a.annotation or ast.Constant(''))
               for a in fn.args.args):
      continue
    for node in ast.walk(fn):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id == 'cfg'):
        if node.attr == 'get':
          gets.append(f'{path}:{node.lineno}')
        else:
          reads.add(node.attr)
  return reads, gets


def test_models_read_only_config_keys_that_have_their_one_default_in_base_config():
  keys = set(configs.base_config().model.keys())
  for path in glob.glob(os.path.join(REPO, 'research', 'models', '*.py')):
    reads, gets = _config_reads(path)
    assert not gets, f'a default outside research/config.py: {gets}'
    assert reads <= keys | {'keys', 'to_dict'}, (path, reads - keys)


@pytest.mark.parametrize('spec', ['mnist_mlp.py', 'mnist_mlp.py:smoke', 'mnist_vit.py:tiny',
                                  'mnist1d_encoder.py', 'shakespeare_char.py:gpu',
                                  'sst2_encoder.py:finetune', 'sst2_pretrain_mlm.py',
                                  'gpt2_small.py'])
def test_experiment_presets_load_and_take_model_overrides_of_their_type(spec):
  argv = ['launch.py', f'--config={os.path.join(REPO, "experiments", spec)}',
          '--config.model.rotary_base=500000', '--config.model.dropout_rate=0',
          '--config.model.max_len=256']
  fv = flags.FlagValues()  # As launch.py's flag, reading these arguments instead of sys.argv.
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  model = fv.config.model
  assert (model.rotary_base, model.dropout_rate, model.max_len) == (500000.0, 0.0, 256)
  assert type(model.rotary_base) is float and type(model.dropout_rate) is float
  model.attention_impl = 'xla'  # gpt2_small's cudnn needs a GPU.
  check_model(model, models.CHOICES)
