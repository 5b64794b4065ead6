"""research/config_checks.py: bad training and model settings are refused with one clear error
before any compute (unknown keys named with the closest one, dtypes, head and length fits)."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import LM_VOCAB, tiny_lm_config

from research import config as configs
from research import models, optimizers
from research.config_checks import check_train_config, check_workdir
from research.data.spec import Meta
from research.errors import ConfigError
from research.models import get_model


def test_check_train_config_rejects_bad_values():
  config = configs.base_config()
  config.batch_size = 0
  with pytest.raises(ConfigError, match='batch_size must be a positive integer'):
    check_train_config(config)
  config = configs.base_config()
  config.optimizer.name = 'adamm'
  with pytest.raises(ConfigError, match='Did you mean "adamw"'):
    optimizers.make_optimizer(config.optimizer, 10)


def test_grad_accum_steps_must_divide_the_batch():
  config = tiny_lm_config()
  config.grad_accum_steps = 3
  with pytest.raises(ConfigError, match='batch_size 16 is not divisible by grad_accum_steps 3'):
    check_train_config(config)


def test_a_mistyped_model_key_is_refused_with_the_closest_key():
  cfg = configs.base_config().model
  cfg.num_head = 2  # An experiment file's typo; the model would silently keep num_heads = 4.
  with pytest.raises(ConfigError, match='no key "num_head". Did you mean "num_heads"'):
    get_model(cfg, Meta('classification', num_classes=10))


def test_a_bad_dtype_is_a_config_error_for_every_model():
  cfg = configs.base_config().model
  cfg.dtype = 'float23'
  with pytest.raises(ConfigError, match="config.model.dtype='float23' is not a dtype"):
    get_model(cfg, Meta('classification', num_classes=10))


@pytest.mark.parametrize('model_options, message', [
    ({'d_model': 30, 'num_heads': 4}, 'not divisible by config.model.num_heads'),
    ({'num_heads': 4, 'num_kv_heads': 3}, 'num_kv_heads=3'),
    ({'max_len': 16}, 'block_size=32 is larger than config.model.max_len=16'),
    ({'norm': 'batchnorm'}, 'is not one of'),
])
def test_bad_lm_model_config_fails_before_compute(model_options, message):
  config = tiny_lm_config(**model_options)
  with pytest.raises(ConfigError, match=message):
    models.get_model(config.model,
                     Meta(task='lm', vocab_size=LM_VOCAB, block_size=config.data.block_size))


def test_workdir_checks_running_at_once_never_fail_each_other(tmp_path):
  # The processes of a multi-process job check the same workdir together (one process once
  # removed the other's probe file, and a healthy job failed as 'not writable').
  def check(_):
    for _ in range(100):
      check_workdir(str(tmp_path))

  with ThreadPoolExecutor(8) as pool:
    list(pool.map(check, range(8)))
  assert os.listdir(tmp_path) == []
