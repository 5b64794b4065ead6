"""Sweeps: the points of an ablation, their names, and checks against the config.

An experiment file may define `get_sweep()` returning the points, built from three helpers:

  from research.tools import sweep as s

  def get_sweep():
    return s.product(s.sweep('model.widths', [(256,), (1024, 1024)]),
                     s.sweep('model.dropout_rate', [0.0, 0.2]),
                     s.sweep('seed', [0, 1, 2]))

A point is a dict of dotted config keys (as on the command line, without `config.`) to values,
so a plain list of dicts works too. Return `Sweep(points, baseline={...})` to name the setting
the report compares against (default: the first point's). Seeds are just one more axis; a
*setting* is a point without its seed, and the report groups seeds by setting.

Running the points lives in sweep_run.py; this module is pure (no processes, no files).
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import importlib.util
import inspect
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

from research.config_checks import check_train_config, suggest
from research.errors import ConfigError

Point = dict[str, Any]
SEED_KEY = 'seed'
MAX_NAME_CHARS = 120
_UNSAFE = re.compile(r'[^A-Za-z0-9._=+-]')


@dataclasses.dataclass(frozen=True)
class Sweep:
  points: list[Point]
  baseline: Point | None = None  # A setting (seed ignored); None = the first point's setting.
  # --executor=slurm: partition, time, ntasks, cpus_per_task, gpus_per_task, options (sbatch
  # options); --slurm_* flags override. None = the flags alone (research/tools/slurm.py).
  slurm: dict | None = None


# --- Building points ---------------------------------------------------------------------------


def _clean_key(key: str) -> str:
  if not isinstance(key, str) or not key.strip('.'):
    raise ConfigError(f'A sweep key must be a dotted config key like "optimizer.learning_rate", '
                      f'got {key!r}.')
  return key.removeprefix('config.')


def _clean_value(value: Any) -> Any:
  # Lists become tuples: ConfigDict fields and `--config.k=(1, 2)` flags both hold tuples.
  return tuple(_clean_value(v) for v in value) if isinstance(value, (list, tuple)) else value


def _as_points(axis: Iterable[Point]) -> list[Point]:
  if isinstance(axis, dict):
    return [{_clean_key(k): _clean_value(v) for k, v in axis.items()}]
  points = list(axis)
  for p in points:
    if not isinstance(p, dict):
      raise ConfigError(f'A sweep point must be a dict of config keys to values, got {p!r}.')
  return [{_clean_key(k): _clean_value(v) for k, v in p.items()} for p in points]


def sweep(key: str, values: Iterable[Any]) -> list[Point]:
  """One axis: `key` takes each of `values` in turn."""
  key = _clean_key(key)
  if isinstance(values, (str, bytes)):
    raise ConfigError(f'sweep("{key}", ...) needs a list of values, got the string {values!r}.')
  values = list(values)
  if not values:
    raise ConfigError(f'sweep("{key}", []) has no values.')
  return [{key: _clean_value(v)} for v in values]


def _merge(a: Point, b: Point, how: str) -> Point:
  both = sorted(set(a) & set(b))
  if both:
    raise ConfigError(f'{how}: key {both[0]!r} is set by two axes; each key may be swept once.')
  return {**a, **b}


def product(*axes: Iterable[Point]) -> list[Point]:
  """Every combination of the axes (the first axis varies slowest)."""
  out: list[Point] = [{}]
  for axis in axes:
    out = [_merge(a, b, 'product') for a in out for b in _as_points(axis)]
  return out


def zipped(*axes: Iterable[Point]) -> list[Point]:
  """The axes side by side: point i takes value i of every axis (all axes equally long)."""
  lists = [_as_points(axis) for axis in axes]
  if not lists:
    return []
  lengths = {len(x) for x in lists}
  if len(lengths) > 1:
    shown = ', '.join(f'{len(x)} ({"/".join(x[0]) if x else "empty"})' for x in lists)
    raise ConfigError(f'zip needs axes of equal length, got lengths {shown}.')
  out = []
  for parts in builtins.zip(*lists, strict=True):
    point: Point = {}
    for part in parts:
      point = _merge(point, part, 'zip')
    out.append(point)
  return out


# --- Settings and names ------------------------------------------------------------------------


def setting_of(point: Point) -> Point:
  """The point without its seed: the unit that seeds are grouped over."""
  return {k: v for k, v in point.items() if k != SEED_KEY}


def _format_value(value: Any) -> str:
  if isinstance(value, tuple):
    return 'x'.join(_format_value(v) for v in value) if value else 'none'
  if isinstance(value, float):
    return f'{value:g}'
  return str(value)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
  """The last part of each dotted key, or the whole key where the last part is ambiguous."""
  last = [k.split('.')[-1] for k in keys]
  return {k: (s if last.count(s) == 1 else k) for k, s in builtins.zip(keys, last, strict=True)}


def _digest(point: Point) -> str:
  return hashlib.sha256(repr(sorted(point.items())).encode()).hexdigest()[:6]


def _raw_name(point: Point, short: dict[str, str]) -> str:
  if not point:
    return 'base'
  name = '__'.join(f'{short[k]}={_format_value(v)}' for k, v in point.items())
  name = _UNSAFE.sub('-', name).lstrip('.-') or 'point'
  if len(name) > MAX_NAME_CHARS:
    name = f'{name[:MAX_NAME_CHARS - 7]}-{_digest(point)}'
  return name


def point_names(points: Sequence[Point]) -> list[str]:
  """Filesystem-safe, unique directory names: `widths=256__dropout_rate=0.2__seed=0`."""
  keys = list(dict.fromkeys(k for p in points for k in p))
  short = short_keys(keys)
  raw = [_raw_name(p, short) for p in points]
  # Formatting can collapse distinct values (e.g. %g): every colliding name gets a content hash.
  names = [f'{n}-{_digest(p)}' if raw.count(n) > 1 else n
           for n, p in builtins.zip(raw, points, strict=True)]
  for i, name in enumerate(names):  # Equal points hash equally; normalize() rejects those.
    if names.count(name) > 1:
      names[i] = f'{name}-{i}'
  return names


def setting_names(points: Sequence[Point]) -> list[str]:
  """Each point's setting name (the name of the point without its seed); seeds share one."""
  settings = [setting_of(p) for p in points]
  unique = [dict(t) for t in dict.fromkeys(tuple(s.items()) for s in settings)]
  by_key = {tuple(s.items()): n for s, n in builtins.zip(unique, point_names(unique), strict=True)}
  return [by_key[tuple(s.items())] for s in settings]


# --- Loading and checking ----------------------------------------------------------------------


def normalize(spec: Any) -> Sweep:
  """A get_sweep() result (list of dicts, Sweep, or {'points', 'baseline'}) as a checked Sweep."""
  slurm = None
  if isinstance(spec, Sweep):
    points, baseline, slurm = spec.points, spec.baseline, spec.slurm
  elif isinstance(spec, dict) and 'points' in spec:
    points, baseline, slurm = spec['points'], spec.get('baseline'), spec.get('slurm')
  else:
    points, baseline = spec, None
  points = _as_points(points or [])
  if not points:
    raise ConfigError('The sweep expands to no points; check the axes in get_sweep().')
  seen: dict[str, int] = {}
  for i, p in enumerate(points):
    key = repr(sorted(p.items()))
    if key in seen:
      raise ConfigError(f'Sweep points {seen[key]} and {i} are the same: {p}.')
    seen[key] = i
  if baseline is not None:
    baseline = setting_of(_as_points(baseline)[0])
    if baseline not in [setting_of(p) for p in points]:
      raise ConfigError(f'The sweep baseline {baseline} is not one of its settings.')
  if slurm is not None and not isinstance(slurm, dict):
    raise ConfigError(f'Sweep(slurm=...) must be a dict of SLURM resources, got {slurm!r}.')
  return Sweep(points, baseline, slurm)


def load(config_arg: str) -> Sweep:
  """get_sweep() of the experiment file in `--config=FILE[:PRESET]` (the preset is passed on)."""
  path, _, preset = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location('sweep_experiment', path)
  if spec is None or spec.loader is None:
    raise ConfigError(f'Cannot load the experiment file {path!r}.')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_sweep = getattr(module, 'get_sweep', None)
  if get_sweep is None:
    raise ConfigError(f'{path} has no get_sweep(); add one returning the sweep points '
                      '(see research/tools/sweep.py).')
  takes_preset = bool(inspect.signature(get_sweep).parameters)
  return normalize(get_sweep(preset or 'default') if takes_preset else get_sweep())


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(_leaf_keys(v, f'{prefix}{k}.'))
    else:
      keys.append(f'{prefix}{k}')
  return keys


def apply(config: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
  """A copy of `config` with the point's values, type-checked by ConfigDict like a flag is."""
  leaves = _leaf_keys(config)
  out = config.copy_and_resolve_references()
  for key, value in point.items():
    if key not in leaves:
      raise ConfigError(f'Sweep key "{key}" is not in the config.{suggest(key, leaves)}')
    *parents, leaf = key.split('.')
    node = out
    for part in parents:
      node = node[part]
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f'Sweep value {key}={value!r} does not fit the config: {e}') from e
  return out


def validate(config: ml_collections.ConfigDict, points: Sequence[Point]) -> None:
  """Every key exists and every resolved point passes the train checks, before anything runs."""
  for point in points:
    resolved = apply(config, point)
    try:
      check_train_config(resolved)
    except ConfigError as e:
      raise ConfigError(f'Sweep point {point}: {e}') from e


def flag_value(value: Any) -> str:
  """How `--config.KEY=VALUE` spells a value so that config_flags parses it back to `value`."""
  if isinstance(value, str):
    return value
  if isinstance(value, float) and not math.isfinite(value):
    raise ConfigError(f'Cannot pass the non-finite value {value!r} on the command line.')
  return repr(value)


def is_finite_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# `zip` is the public name; `zipped` keeps the builtin usable inside this module.
zip = zipped  # noqa: A001


__all__ = ['Sweep', 'sweep', 'product', 'zip', 'zipped', 'setting_of', 'point_names', 'normalize',
           'setting_names', 'load', 'apply', 'validate', 'flag_value']
