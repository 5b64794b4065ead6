"""Checks a resolved config before any compute, so mistakes fail fast with a clear message."""

from __future__ import annotations

import difflib
import os

import ml_collections

from research.errors import ConfigError


def suggest(key: str, choices: list[str]) -> str:
  close = difflib.get_close_matches(key, choices, n=1)
  return f' Did you mean "{close[0]}"?' if close else ''


def check_choice(config: ml_collections.ConfigDict, key: str, choices: list[str]) -> None:
  value = get_dotted(config, key)
  if value not in choices:
    hint = suggest(str(value), choices)
    raise ConfigError(f'config.{key}={value!r} is not one of {choices}.{hint}')


def get_dotted(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split('.'):
    if part not in node:
      raise ConfigError(f'config has no key "{key}".{suggest(part, list(node.keys()))}')
    node = node[part]
  return node


def check_positive(config: ml_collections.ConfigDict, *keys: str) -> None:
  for key in keys:
    value = get_dotted(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f'config.{key} must be a positive integer, got {value!r}.')


def check_train_config(config: ml_collections.ConfigDict) -> None:
  """Validates the keys the train loop relies on (the config contract in the README)."""
  check_positive(config, 'num_train_steps', 'batch_size', 'log_every_steps',
                 'eval_every_steps', 'checkpoint_every_steps')
  if config.get('eval_batch_size') is not None:
    check_positive(config, 'eval_batch_size')
  lr = config.optimizer.learning_rate
  if not isinstance(lr, (int, float)) or lr <= 0:
    raise ConfigError(f'config.optimizer.learning_rate must be a positive number, got {lr!r}.')
  if config.optimizer.warmup_steps < 0:
    raise ConfigError('config.optimizer.warmup_steps must be >= 0.')
  check_choice(config, 'nan_policy', ['stop', 'skip'])
  if config.get('grad_accum_steps') is not None:
    check_positive(config, 'grad_accum_steps')
    if config.batch_size % config.grad_accum_steps:
      raise ConfigError(f'batch_size {config.batch_size} is not divisible by grad_accum_steps '
                        f'{config.grad_accum_steps} (the batch is cut into that many '
                        'micro-batches).')


def check_workdir(workdir: str) -> None:
  """Fails early when the workdir cannot be created or written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.write_probe')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'workdir {workdir!r} is not writable: {e.strerror}. '
                      'Pass --workdir=DIR with a folder you can write to.') from e
