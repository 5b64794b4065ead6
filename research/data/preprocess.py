"""Preprocessing as a small op list in the config, big_vision style: `data.preprocess`.

  c.data.preprocess = 'value_range(0, 1)|random_crop(32, pad=4)|flip_lr'

Ops run on the host, on numpy batches of the input feature (leading dim = rows), after the
rows are gathered, so the data stays compact (uint8) in memory. Random ops (random_crop, flip_lr)
run in training only: evaluation takes their deterministic form (a centre crop, no flip). Their
randomness is a pure function of (seed, step, op position, global row), so a resumed run, or
one on another number of processes, sees the same pixels. `tokenize` turns a text feature into
ids and a 0/1 input_mask through the dataset's tokenizer (research/data/tokenizers.py).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable

import numpy as np

from research.config_checks import suggest
from research.errors import ConfigError

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rand:
  """The random draws of one global batch: (seed, step) and this process's rows of it."""

  seed: int
  step: int
  rows: slice  # This process's rows of the global batch.
  global_batch: int

  def uniform(self, op_index: int, per_row: int) -> np.ndarray:
    """[rows, per_row] uniforms in [0, 1): the same for a row whichever process draws it."""
    draws = np.random.default_rng([self.seed, self.step, op_index]).random(
        (self.global_batch, per_row))
    return draws[self.rows]


@dataclasses.dataclass(frozen=True)
class Op:
  """One parsed op: `fn(x, train, draws)` with its config arguments bound."""

  name: str
  args: tuple
  kwargs: dict
  fn: Callable
  random: bool  # Needs draws in training (how many per row: `draws`).
  draws: int = 0


def value_range(x, lo: float, hi: float, in_min: float = 0, in_max: float = 255):
  """[in_min, in_max] (uint8 pixels by default) -> float32 [lo, hi]."""
  return (x.astype(np.float32) - in_min) / (in_max - in_min) * (hi - lo) + lo


def normalize(x, mean, std):
  """(x - mean) / std, per channel when mean and std are lists."""
  return ((x.astype(np.float32) - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))


def resize(x, height: int, width: int | None = None):
  """Bilinear resize of NxHxWxC images (half-pixel centres, no antialiasing) to float32."""
  width = width or height
  x = x.astype(np.float32)

  def axis_weights(n_in: int, n_out: int):
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)

  lo, hi, w = axis_weights(x.shape[1], height)
  x = x[:, lo] * (1 - w)[None, :, None, None] + x[:, hi] * w[None, :, None, None]
  lo, hi, w = axis_weights(x.shape[2], width)
  return x[:, :, lo] * (1 - w)[None, None, :, None] + x[:, :, hi] * w[None, None, :, None]


def _pad(x, pad: int):
  return np.pad(x, [(0, 0), (pad, pad), (pad, pad)] + [(0, 0)] * (x.ndim - 3)) if pad else x


def center_crop(x, size: int, pad: int = 0):
  x = _pad(x, pad)
  top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
  _check_crop(x, size)
  return x[:, top:top + size, left:left + size]


def random_crop(x, size: int, pad: int = 0, *, train: bool = True, draws=None):
  """Zero-pad by `pad`, then a random size x size window (training) or the centre (eval)."""
  if not train:
    return center_crop(x, size, pad)
  x = _pad(x, pad)
  _check_crop(x, size)
  tops = (draws[:, 0] * (x.shape[1] - size + 1)).astype(np.int64)
  lefts = (draws[:, 1] * (x.shape[2] - size + 1)).astype(np.int64)
  rows = np.arange(size)
  idx_h = (tops[:, None] + rows)[:, :, None]
  idx_w = (lefts[:, None] + rows)[:, None, :]
  return x[np.arange(len(x))[:, None, None], idx_h, idx_w]


def flip_lr(x, *, train: bool = True, draws=None):
  """A left-right flip of each image with probability 1/2 (training only)."""
  if not train:
    return x
  flip = draws[:, 0] < 0.5
  return np.where(flip.reshape((-1,) + (1,) * (x.ndim - 1)), x[:, :, ::-1], x)


def reshape(x, *shape: int):
  """Each example to `shape` (e.g. reshape(40, 1): signals as time x channels)."""
  return x.reshape((len(x), *shape))


def _check_crop(x, size: int) -> None:
  if size > min(x.shape[1], x.shape[2]):
    raise ConfigError(f'crop size {size} is larger than the (padded) image '
                      f'{x.shape[1]}x{x.shape[2]}.')


# name: (function, random draws per row in training or 0).
OPS: dict[str, tuple[Callable, int]] = {
    'value_range': (value_range, 0), 'normalize': (normalize, 0), 'resize': (resize, 0),
    'center_crop': (center_crop, 0), 'random_crop': (random_crop, 2), 'flip_lr': (flip_lr, 1),
    'reshape': (reshape, 0), 'tokenize': (None, 0),
}


def parse(spec: str) -> tuple[Op, ...]:
  """'op(args)|op2' -> ops; ConfigError naming the known ops for an unknown one."""
  ops = []
  for text in (t.strip() for t in spec.split('|')):
    if not text:
      continue
    name, _, rest = text.partition('(')
    name = name.strip()
    if name not in OPS:
      raise ConfigError(f'config.data.preprocess: unknown op {name!r}; known: {sorted(OPS)}.'
                        f'{suggest(name, list(OPS))}')
    try:
      call = ast.parse(f'f({rest}' if rest else 'f()', mode='eval').body
      args = tuple(ast.literal_eval(a) for a in call.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
      raise ConfigError(f'config.data.preprocess: cannot read {text!r} (write op(1, 2, k=3) '
                        f'with literal arguments): {e}') from e
    fn, draws = OPS[name]
    ops.append(Op(name, args, kwargs, fn, draws > 0, draws))
  return tuple(ops)


def apply(ops: tuple[Op, ...], x: np.ndarray, *, train: bool,
          rand: Rand | None = None) -> np.ndarray:
  """The array ops on a batch `x` (tokenize is the dataset's: it is skipped here)."""
  for i, op in enumerate(ops):
    if op.fn is None:
      continue
    try:
      if op.random:
        draws = rand.uniform(i, op.draws) if train else None
        x = op.fn(x, *op.args, **op.kwargs, train=train, draws=draws)
      else:
        x = op.fn(x, *op.args, **op.kwargs)
    except TypeError as e:  # Wrong arguments for the op.
      raise ConfigError(f'config.data.preprocess: {op.name}{op.args or ""}: {e}') from e
  return x


def tokenize_args(ops: tuple[Op, ...]) -> dict | None:
  """The arguments of the `tokenize` op (max_len=...), or None when there is none."""
  found = [op for op in ops if op.name == 'tokenize']
  if not found:
    return None
  op = found[0]
  kwargs = dict(op.kwargs)
  if op.args:
    kwargs['max_len'] = op.args[0]
  if not isinstance(kwargs.get('max_len'), int) or kwargs['max_len'] <= 0:
    raise ConfigError('config.data.preprocess: tokenize needs max_len, a positive integer '
                      f'(e.g. tokenize(64)), got {op.args or op.kwargs}.')
  return kwargs
