"""Storage paths: a local folder, or a URI (`gs://bucket/run`) whose scheme has a backend.

Everything a run writes or reads by path (workdir, data dir, init_from, export) goes through
`etils.epath`, which Orbax and TFDS also take, so `gs://` works where its backend is installed:
TensorFlow's `tf.io.gfile` when TensorFlow is installed (epath then uses it for every scheme),
else fsspec with the scheme's package (gcsfs for gs://, s3fs for s3://). `check` refuses a scheme
with no backend before any compute: without it `gs://bucket/run` used to become a local folder
named `gs:` (os.makedirs takes the URI as a relative path). Local paths stay plain os paths.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import re
import time

import fsspec
from etils import epath

from research.errors import ConfigError

URI = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')  # RFC 3986 scheme, then '//'.


def scheme(path: str) -> str | None:
  """'gs' for 'gs://bucket/x'; None for a local path."""
  match = URI.match(str(path))
  return match.group(1).lower() if match else None


def is_local(path: str) -> bool:
  return scheme(path) is None


@functools.cache
def _tf_schemes() -> frozenset[str] | None:
  """The schemes tf.io.gfile serves, or None when TensorFlow is not installed."""
  if importlib.util.find_spec('tensorflow') is None:
    return None
  import tensorflow as tf  # Heavy: only for a URI, and TFDS imports it anyway.

  return frozenset(tf.io.gfile.get_registered_schemes())


def backend_problem(name: str) -> str | None:
  """Why scheme `name` cannot be read or written here, or None when it can."""
  try:
    epath.Path(f'{name}://probe')
  except KeyError:  # etils.epath has no path class for it.
    return f'etils.epath knows no {name}:// paths'
  tf_schemes = _tf_schemes()
  if tf_schemes is not None:  # epath then uses tf.io.gfile for every scheme it knows.
    if name in tf_schemes:
      return None
    return (f'TensorFlow is installed, so etils.epath uses tf.io.gfile for {name}://, and it has '
            f'no {name}:// filesystem (it has: {", ".join(sorted(s for s in tf_schemes if s))})')
  try:
    fsspec.get_filesystem_class(name)
  except ImportError as e:
    return f'fsspec needs a package for {name}://: {e}'
  except ValueError:
    return f'fsspec knows no {name}:// filesystem'
  return None


def check(path: str, what: str) -> str:
  """`path` itself; ConfigError (naming `what`, e.g. '--workdir') when its scheme has no backend."""
  name = scheme(path)
  if name is not None:
    problem = _problem_cached(name)
    if problem:
      raise ConfigError(f'{what}={path!r}: no storage backend for {name}:// here ({problem}). '
                        'Use a local path, or install the backend (e.g. gcsfs for gs://).')
  return str(path)


_problem_cached = functools.cache(backend_problem)


def get(path: str) -> epath.Path:
  """The epath.Path of a local path or URI."""
  return epath.Path(path)


def join(path: str, *names: str) -> str:
  """`os.path.join` that keeps a URI a URI (posix separators, scheme untouched)."""
  return str(get(path).joinpath(*names)) if scheme(path) else os.path.join(path, *names)


def exists(path: str) -> bool:
  return get(path).exists()


def makedirs(path: str) -> None:
  get(path).mkdir(parents=True, exist_ok=True)


def read_text(path: str) -> str:
  return get(path).read_text(encoding='utf-8')


def write_text(path: str, text: str) -> None:
  """Writes through a temporary file and a rename: a reader never sees half a file (on object
  stores the rename is a copy, still never a partial object)."""
  tmp = get(path + '.tmp')
  tmp.write_text(text, encoding='utf-8')
  tmp.replace(get(path))


def append_text(path: str, text: str) -> None:
  """Appends (local files); object stores have no append, so there the file is rewritten whole
  (fine for the small line-per-event files a run keeps: metrics, samples, config history)."""
  if is_local(path):
    with open(path, 'a') as f:
      f.write(text)
    return
  p = get(path)
  p.write_text((p.read_text() if p.exists() else '') + text)


def absolute(path: str) -> str:
  """A local path made absolute (what Orbax wants); a URI unchanged."""
  return os.path.abspath(path) if is_local(path) else str(path)


def isdir(path: str) -> bool:
  return get(path).is_dir()


def listdir(path: str) -> list[str]:
  return [p.name for p in get(path).iterdir()]


class Upload:
  """A file on a URI that grows (a log, TensorBoard events): object stores have no append, so
  the whole file is written again at a flush, at most every `every_s` seconds, and at exit."""

  def __init__(self, path: str, binary: bool, every_s: float = 10.0):
    self._path, self._every_s, self._last = get(path), every_s, 0.0
    self._data = bytearray() if binary else []
    atexit.register(self.close)

  def write(self, data) -> int:
    self._data += data if isinstance(self._data, bytearray) else [data]
    return len(data)

  def flush(self, force: bool = False) -> None:
    if force or time.monotonic() - self._last >= self._every_s:
      data = self._data
      if isinstance(data, bytearray):
        self._path.write_bytes(bytes(data))
      else:
        self._path.write_text(''.join(data))
      self._last = time.monotonic()

  def close(self) -> None:
    if self._data is not None:
      self.flush(force=True)
      self._data = None
      atexit.unregister(self.close)
