"""research/tools/sweep.py: expansion (product, zip), point and setting names, flag values, the
checks before running, an experiment file's sweep. Running sweeps: tests/test_sweep_run.py."""

import ast
import os
import re

import pytest
from conftest import REPO
from helpers import small_mlp_config

from research.errors import ConfigError
from research.tools import sweep as s

SAFE_NAME = re.compile(r'^[A-Za-z0-9._=+-]+$')


# --- Expansion and names -----------------------------------------------------------------------


def test_product_counts_names_and_settings():
  points = s.product(s.sweep('model.widths', [(256,), [1024, 1024]]),
                     s.sweep('config.model.dropout_rate', [0.0, 0.2]),
                     s.sweep('seed', [0, 1, 2]))
  assert len(points) == 12
  assert points[3] == {'model.widths': (256,), 'model.dropout_rate': 0.2, 'seed': 0}
  assert points[-1]['model.widths'] == (1024, 1024)  # Lists become tuples, like the flags.
  names = s.point_names(points)
  assert len(set(names)) == 12 and all(SAFE_NAME.match(n) for n in names)
  assert names[0] == 'widths=256__dropout_rate=0__seed=0'
  settings = s.setting_names(points)
  assert len(set(settings)) == 4  # Seeds share a setting.
  assert settings[0] == settings[1] == settings[2] == 'widths=256__dropout_rate=0'


def test_zip_pairs_axes_and_rejects_unequal_lengths():
  points = s.zip(s.sweep('optimizer.learning_rate', [1e-3, 3e-3]),
                 s.sweep('optimizer.warmup_steps', [0, 100]))
  assert points == [{'optimizer.learning_rate': 1e-3, 'optimizer.warmup_steps': 0},
                    {'optimizer.learning_rate': 3e-3, 'optimizer.warmup_steps': 100}]
  with pytest.raises(ConfigError, match='equal length.*3.*2'):
    s.zip(s.sweep('a', [1, 2, 3]), s.sweep('b', [1, 2]))
  assert len(s.product(points, s.sweep('seed', [0, 1]))) == 4


@pytest.mark.parametrize('build, message', [
    (lambda: s.product(s.sweep('seed', [0]), s.sweep('seed', [1])), 'swept once'),
    (lambda: s.sweep('seed', []), 'no values'),
    (lambda: s.sweep('seed', 'abc'), 'list of values'),
    (lambda: s.normalize([]), 'no points'),
    (lambda: s.normalize(s.product(s.sweep('a', [1]), [])), 'no points'),
    (lambda: s.normalize([{'seed': 0}, {'seed': 0}]), 'are the same'),
    (lambda: s.normalize(s.Sweep([{'seed': 0}], baseline={'a': 1})), 'not one of its settings'),
])
def test_bad_sweeps_fail_clearly(build, message):
  with pytest.raises(ConfigError, match=message):
    build()


def test_names_stay_unique_and_short():
  close = [{'optimizer.learning_rate': 1e-3, 'model.lr': 2},
           {'optimizer.learning_rate': 1.0000001e-3, 'model.lr': 2}]  # Same '%g' spelling.
  names = s.point_names(close)
  assert len(set(names)) == 2 and all(SAFE_NAME.match(n) for n in names)
  assert names[0].startswith('learning_rate=0.001__lr=2')
  long = [{'data.name': 'x/' * 200 + str(i)} for i in range(2)]
  names = s.point_names(long)
  assert len(set(names)) == 2 and all(len(n) <= s.MAX_NAME_CHARS and SAFE_NAME.match(n)
                                      for n in names)
  # Keys with the same last part keep their full dotted names.
  names = s.point_names([{'model.dtype': 'float32', 'optimizer.dtype': 'bfloat16'}])
  assert names == ['model.dtype=float32__optimizer.dtype=bfloat16']


@pytest.mark.parametrize('value', [(1024, 1024), (256,), 0.001, 3e-05, 7, True, 'adamw'])
def test_flag_values_parse_back(value):
  text = s.flag_value(value)
  parsed = text if isinstance(value, str) else ast.literal_eval(text)
  assert parsed == value and type(parsed) is type(value)


# --- Checks before running ---------------------------------------------------------------------


def test_validate_catches_unknown_keys_types_and_bad_values():
  config = small_mlp_config()
  s.validate(config, [{'model.widths': (4, 4), 'optimizer.learning_rate': 1, 'seed': 3}])
  with pytest.raises(ConfigError, match='"model.widht".*Did you mean "model.widths"'):
    s.validate(config, [{'seed': 0}, {'model.widht': (4,)}])
  with pytest.raises(ConfigError, match='dropout_rate=.*does not fit'):
    s.validate(config, [{'model.dropout_rate': 'high'}])
  with pytest.raises(ConfigError, match='learning_rate must be a positive'):
    s.validate(config, [{'optimizer.learning_rate': -1.0}])


def test_mnist_experiment_defines_its_ablation():
  from experiments.mnist_mlp import get_config

  sweep = s.load(os.path.join(REPO, 'experiments', 'mnist_mlp.py'))
  assert len(sweep.points) == 12 and {p['seed'] for p in sweep.points} == {0, 1, 2}
  assert sweep.baseline == {'model.widths': (1024, 1024), 'model.dropout_rate': 0.2}
  s.validate(get_config(), sweep.points)
