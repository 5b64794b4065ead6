"""Checks a resolved config before any compute, so mistakes fail fast with a clear message.

Where a key is checked: the train loop's keys in `check_train_config`, the model's in
`check_model` (run by research.models.get_model), the optimizer's in research/optimizers.py, the
data keys in each dataset module; a check that needs the dataset (a sequence against
model.max_len, an image against model.patch_size) stays with the model that builds from both.
"""

from __future__ import annotations

import difflib
import os
import socket
import threading
from collections.abc import Collection, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from research import paths
from research.config import model_config
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
  """Validates the keys the train loop relies on (research/config.py, docs/configs.md)."""
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
  check_choice(config, 'data.source', ['auto', 'memory', 'stream'])
  workers = config.data.get('workers', 0)
  if not isinstance(workers, int) or workers < 0:
    raise ConfigError(f'config.data.workers must be an integer >= 0, got {workers!r}.')
  if config.get('grad_accum_steps') is not None:
    check_positive(config, 'grad_accum_steps')
    if config.batch_size % config.grad_accum_steps:
      raise ConfigError(f'batch_size {config.batch_size} is not divisible by grad_accum_steps '
                        f'{config.grad_accum_steps} (the batch is cut into that many '
                        'micro-batches).')
  check_storage(config)


def check_storage(config: ml_collections.ConfigDict) -> None:
  """Every path key a run reads has a storage backend for its scheme (paths.py), checked before
  any compute; `init_from=hf:PATH` is checked without its prefix."""
  init_from = config.get('init_from') or ''
  for key, value in (('config.data.data_dir', config.data.get('data_dir') or ''),
                     ('config.data.manual_dir', config.data.get('manual_dir') or ''),
                     ('config.init_from', init_from.removeprefix('hf:'))):
    paths.check(value, key)


def check_model(cfg: ml_collections.ConfigDict, choices: Mapping[str, Collection[str]]) -> None:
  """Every check of `config.model`'s values that needs no dataset; ConfigError on the first.

  `choices`: each choice key's accepted values, taken from the code that implements them
  (research/models/__init__.py, `CHOICES`), so a list here cannot drift from the code.
  """
  known = list(model_config().keys())
  for key in cfg.keys():
    if key not in known:
      raise ConfigError(f'config.model has no key "{key}".{suggest(key, known)}')
  if cfg.name not in choices['name']:
    names = list(choices['name'])
    raise ConfigError(f'Unknown model config.model.name={cfg.name!r}; known: {sorted(names)}.'
                      f'{suggest(str(cfg.name), names)}')
  for key in ('dtype', 'param_dtype'):
    _check_dtype(cfg, key)
  if cfg.name == 'mlp':
    _check_mlp(cfg, choices)
  else:
    _check_transformer(cfg, choices)


def _check_dtype(cfg: ml_collections.ConfigDict, key: str) -> None:
  try:
    jnp.dtype(cfg[key])
  except TypeError as e:
    raise ConfigError(f'config.model.{key}={cfg[key]!r} is not a dtype '
                      '(e.g. float32, bfloat16).') from e


def _check_model_choice(cfg: ml_collections.ConfigDict, key: str, choices: Collection[str],
                        shown: list[str] | None = None) -> None:
  value = cfg[key]
  if value not in choices:
    raise ConfigError(f'config.model.{key}={value!r} is not one of {shown or list(choices)}.'
                      f'{suggest(str(value), list(choices))}')


def _check_rate(cfg: ml_collections.ConfigDict, key: str) -> None:
  value = cfg[key]
  if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
    raise ConfigError(f'config.model.{key} must be in [0, 1), got {value!r}.')


def _is_int(value, minimum: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_mlp(cfg: ml_collections.ConfigDict, choices: Mapping[str, Collection[str]]) -> None:
  _check_model_choice(cfg, 'activation', choices['activation'], sorted(choices['activation']))
  if not all(_is_int(w, 1) for w in cfg.widths):
    raise ConfigError(f'config.model.widths must be positive integers, got {cfg.widths!r}.')
  _check_rate(cfg, 'dropout_rate')


def _check_transformer(cfg: ml_collections.ConfigDict,
                       choices: Mapping[str, Collection[str]]) -> None:
  for key in ('num_layers', 'd_model', 'num_heads'):
    if not _is_int(cfg[key], 1):
      raise ConfigError(f'config.model.{key} must be a positive integer, got {cfg[key]!r}.')
  for key, zero in (('type_vocab_size', 'no token types'), ('num_kv_heads', 'num_heads'),
                    ('d_ff', '4 * d_model'),
                    ('max_len', "the data's length"), ('patch_size', 'token inputs')):
    if not _is_int(cfg[key], 0):
      raise ConfigError(f'config.model.{key} must be a positive integer (or 0 = {zero}), got '
                        f'{cfg[key]!r}.')
  if cfg.d_model % cfg.num_heads:
    raise ConfigError(f'config.model.d_model={cfg.d_model} is not divisible by '
                      f'config.model.num_heads={cfg.num_heads}.')
  kv_heads = cfg.num_kv_heads or cfg.num_heads
  if cfg.num_heads % kv_heads:
    raise ConfigError(f'config.model.num_heads={cfg.num_heads} is not divisible by '
                      f'config.model.num_kv_heads={kv_heads} (grouped-query attention shares '
                      'each KV head among num_heads / num_kv_heads query heads).')
  for key in ('dropout_rate', 'attention_dropout_rate'):
    _check_rate(cfg, key)
  eps = cfg.layernorm_epsilon
  if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
    raise ConfigError(f'config.model.layernorm_epsilon must be a number in (0, 1), got {eps!r}.')
  for key in ('norm', 'mlp', 'positions', 'attention_impl', 'remat', 'pooling', 'norm_position',
              'gelu'):
    _check_model_choice(cfg, key, choices[key])
  head_dim = cfg.d_model // cfg.num_heads
  if cfg.positions == 'rotary' and head_dim % 2:
    raise ConfigError(f'Rotary positions need an even head dim; d_model / num_heads = '
                      f'{head_dim}.')
  if cfg.attention_impl == 'cudnn':
    _check_cudnn(cfg)


def _check_cudnn(cfg: ml_collections.ConfigDict) -> None:
  if jax.default_backend() != 'gpu':
    raise ConfigError(f"config.model.attention_impl='cudnn' needs an NVIDIA GPU; this run is on "
                      f"{jax.default_backend()}. Use attention_impl='xla'.")
  if jnp.dtype(cfg.dtype) not in (jnp.bfloat16, jnp.float16):
    raise ConfigError(f"config.model.attention_impl='cudnn' needs config.model.dtype bfloat16 or "
                      f"float16 (cuDNN flash attention has no {jnp.dtype(cfg.dtype)} kernel).")
  if cfg.attention_dropout_rate:
    raise ConfigError("config.model.attention_impl='cudnn' runs without attention-probability "
                      'dropout; set config.model.attention_dropout_rate=0.')


def check_workdir(workdir: str) -> None:
  """Fails early when the workdir's scheme has no backend (paths.py), or it cannot be created or
  written."""
  paths.check(workdir, '--workdir')
  try:
    paths.makedirs(workdir)
    # One probe per process: the processes of a multi-process job share the workdir, and one
    # unlinking another's probe made a healthy job fail as 'not writable' (seen in CI).
    who = f'{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}'
    probe = paths.get(paths.join(workdir, f'.write_probe.{who}'))
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise ConfigError(f'workdir {workdir!r} is not writable: {e.strerror}. '
                      'Pass --workdir=DIR with a folder you can write to.') from e
  except Exception as e:  # noqa: BLE001 - a remote backend (tf.io.gfile, fsspec) raises its own.
    raise ConfigError(f'workdir {workdir!r} cannot be written: {type(e).__name__}: '
                      f'{str(e).splitlines()[0] if str(e) else ""}') from e
