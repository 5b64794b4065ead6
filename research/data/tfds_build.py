"""Builds TFDS datasets with their real builders, offline from a manual dir when one is given.

TFDS looks for each source file in `manual_dir` by the name in its checksum list and verifies size
and sha256, so a manual dir gives byte-for-byte the dataset a download would. Without a manual dir
TFDS downloads only when `download` is set (config.data.download): offline, an unbuilt dataset with
no manual dir would make TFDS try the network and hang, so we check before calling it.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import io
import os
import re
from collections.abc import Iterator

import numpy as np

from research import paths
from research.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'data')


def default_manual_dir(subdir: str) -> str | None:
  """`../shared/data/<subdir>` beside the repo when it exists (the offline copies), else None."""
  path = os.path.join(SHARED_DATA, subdir)
  return path if os.path.isdir(path) else None


def default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def get_builder(name: str, data_dir: str | None):
  """The TFDS builder of `name` (registered, or stored in `data_dir` by
  tfds.dataset_builders.store_as_tfds_dataset); ConfigError with close names if none."""
  import tensorflow_datasets as tfds  # Imported lazily: it pulls in TensorFlow.

  data_dir = data_dir or default_data_dir()
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    bare = name.split(':')[0].split('/')[0]
    local = sorted(d for d in os.listdir(data_dir) if not d.startswith(('.', 'downloads'))
                   ) if os.path.isdir(data_dir) else []
    close = difflib.get_close_matches(bare, sorted(set(tfds.list_builders()) | set(local)), n=3)
    hint = f' Close names: {", ".join(close)}.' if close else ''
    raise ConfigError(f'config.data.name={name!r}: TFDS has no such dataset, and none is stored '
                      f'in data_dir {data_dir}.{hint}') from e


def build(name: str, data_dir: str | None, manual_dir: str | None,
          required_files: tuple[str, ...] | None = None, download: bool = True,
          file_format: str | None = None):
  """Returns a prepared TFDS builder, building it from `manual_dir` (or the network, when
  `download`) if needed. `required_files`: the source files a manual dir must hold; None = the
  file names of the builder's checksum list. `file_format`: the record format of a new build
  ('array_record' for `tfds.data_source`, streaming.py); None = TFDS's default (tfrecord)."""
  import tensorflow_datasets as tfds

  data_dir = data_dir or default_data_dir()
  builder = get_builder(name, data_dir)
  if _is_prepared(builder):
    return builder
  if not manual_dir and not download:
    raise ConfigError(
        f'Dataset {name!r} is not built in data_dir {data_dir} and no manual dir is given. Fix: '
        'point --config.data.manual_dir at its source files, --config.data.data_dir at a data '
        'dir where it is built, or set --config.data.download=True to let TFDS download it '
        '(needs internet; offline TFDS would hang).')
  if manual_dir:
    if required_files is None:
      required_files = tuple(sorted(info.filename or url.rsplit('/', 1)[-1]
                                    for url, info in (builder.url_infos or {}).items()))
    missing = [f for f in required_files if not os.path.exists(os.path.join(manual_dir, f))]
    if not os.path.isdir(manual_dir) or missing:
      problem = ('does not exist' if not os.path.isdir(manual_dir)
                 else 'lacks ' + ', '.join(missing))
      raise ConfigError(
          f'Dataset {name!r} is not built in {data_dir} and its manual dir {manual_dir!r} '
          f'{problem}. Tried: data_dir={data_dir}, manual_dir={manual_dir}. Fix: point '
          '--config.data.manual_dir at the folder with the source files '
          '(see ../shared/data/README.md), or set it to "" and --config.data.download=True to let '
          'TFDS download them (needs internet).')
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  try:
    builder.download_and_prepare(download_config=download_config, file_format=file_format)
  except tfds.core.download.download_manager.NonMatchingChecksumError as e:
    raise ConfigError(checksum_message(name, manual_dir, str(e))) from e
  except AssertionError as e:  # TFDS asserts when a manual-download dataset has no manual dir.
    raise ConfigError(f'Dataset {name!r} needs its source files in a manual dir: {e}') from e
  return builder


def checksum_message(name: str, manual_dir: str | None, tfds_message: str) -> str:
  """TFDS's NonMatchingChecksumError text -> one line naming the file and both sha256s."""
  path = re.search(r'downloaded to (.+?), has wrong checksum', tfds_message)
  sums = re.findall(r"checksum='([0-9a-f]+)'", tfds_message)
  if not path or len(sums) != 2:
    return f'A source file for {name!r} in {manual_dir} fails the TFDS checksum: {tfds_message}'
  return (f'{path.group(1)} fails the TFDS checksum of dataset {name!r} (sha256 {sums[1]}, '
          f'expected {sums[0]}): the file is corrupt, truncated or another version. Replace it '
          'with the original file (see ../shared/data/README.md); nothing was built.')


def _is_prepared(builder) -> bool:
  return paths.exists(paths.join(str(builder.data_path), 'dataset_info.json'))


def load_arrays(name: str, split: str, data_dir: str | None, manual_dir: str | None,
                required_files: tuple[str, ...] | None = (),
                download: bool = True) -> dict[str, np.ndarray]:
  """A whole split as numpy arrays, decoded once and cached beside the TFDS files.

  Small datasets live in memory: decoding a record per step costs ~100x the CPU of gathering it
  (docs/data.md#streaming), so the first run decodes with TFDS and saves `.npz`; later runs skip
  TensorFlow. Larger data streams instead (streaming.py).
  """
  data_dir = data_dir or default_data_dir()
  arrays = read_cache(name, split, data_dir)
  if arrays is not None:
    return arrays
  # Several processes started together (srun -n 2) on a fresh data dir: the first builds and
  # decodes, the others wait on the lock and then read what it wrote.
  with build_lock(data_dir, name):
    arrays = read_cache(name, split, data_dir)
    if arrays is not None:
      return arrays
    import tensorflow_datasets as tfds

    builder = build(name, data_dir, manual_dir, required_files, download)
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    # Text features decode to object arrays of bytes; fixed-width bytes ('S') save without pickle.
    arrays = {k: np.asarray(v).astype(np.bytes_) if np.asarray(v).dtype == object
              else np.asarray(v) for k, v in arrays.items()}
    cache = _cache_path(name, split, data_dir, str(builder.data_path))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = paths.get(cache + '.tmp.npz')
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(cache)  # Atomic: a killed run never leaves a half-written cache.
  return arrays


@contextlib.contextmanager
def build_lock(data_dir: str, name: str) -> Iterator[None]:
  """An exclusive lock per dataset in `data_dir` (flock: released even when a holder is killed).
  A URI data dir (gs://) has no file locks: build it once beforehand, from one process."""
  if not paths.is_local(data_dir):
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  path = os.path.join(data_dir, f'.{name.replace("/", "_")}.lock')
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def read_cache(name: str, split: str, data_dir: str) -> dict[str, np.ndarray] | None:
  """The split's arrays cached by an earlier load_arrays, or None (read without TensorFlow)."""
  cache = _cache_path(name, split, data_dir)
  if cache and paths.exists(cache):
    with paths.get(cache).open('rb') as file, np.load(file, allow_pickle=False) as f:
      return dict(f)
  return None


def prepared_path(name: str, data_dir: str) -> str | None:
  """`<data_dir>/<name>/<newest prepared version>` found on disk, or None."""
  root = paths.join(data_dir, *name.split('/'))
  versions = sorted(paths.listdir(root)) if paths.isdir(root) else []
  versions = [v for v in versions if re.fullmatch(r'\d+\.\d+\.\d+', v)
              and paths.exists(paths.join(root, v, 'dataset_info.json'))]
  if not versions:
    return None
  return paths.join(root, max(versions, key=lambda v: tuple(map(int, v.split('.')))))


def _cache_path(name: str, split: str, data_dir: str, data_path: str | None = None) -> str | None:
  """`<data_dir>/<name>/<version>/arrays-<split>.npz`; the version folder is found on disk."""
  data_path = data_path or prepared_path(name, data_dir)
  if data_path is None:
    return None
  safe_split = split.replace('[', '_').replace(']', '_').replace(':', '-').replace('%', 'pct')
  return paths.join(data_path, f'arrays-{safe_split}.npz')
