"""Storage paths (research/paths.py): a URI whose scheme has no backend is refused before anything
is written (no local folder named after the scheme), and a URI with a backend is really written
through it. The backend here is TensorFlow's in-process `ram://` filesystem (tf.io.gfile), which
needs no network; etils.epath is taught the scheme by the `ram_scheme` fixture, the way it knows
gs://. Orbax checkpoints are not covered: Orbax writes arrays with TensorStore, which maps only
gs:// (and s3://) to a remote driver, so no offline scheme exercises that path."""

import contextlib
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from etils.epath import gpath, register

from experiments import shakespeare_char
from research import config_checks, metrics, paths, provenance, train
from research.config import base_config
from research.data import tfds_build, tokenizers
from research.data.spec import Dataset, Meta
from research.errors import ConfigError
from research.tools import dryrun, sample

tf = pytest.importorskip('tensorflow')


class _RamBackend(type(gpath.backend_lib.tf_backend)):
  """tf.io.gfile, except that opening a ram:// file to write replaces it (TensorFlow's RAM
  filesystem appends instead, which no real object store does)."""

  @contextlib.contextmanager
  def open(self, path, mode):
    if mode.startswith('w') and self.gfile.exists(path):
      self.gfile.remove(path)
    with super().open(path, mode) as f:
      yield f


@pytest.fixture
def ram_scheme(monkeypatch):
  """`ram://` paths through etils.epath's TensorFlow backend, as it serves gs://."""
  monkeypatch.setattr(gpath, '_URI_PREFIXES', (*gpath._URI_PREFIXES, 'ram://'))
  monkeypatch.setattr(gpath, '_URI_SCHEMES', gpath._URI_SCHEMES | {'ram'})
  monkeypatch.setitem(gpath._URI_MAP_ROOT, 'ram://', '/ram/')
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, 'ram', _RamBackend())
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)  # Else epath takes tf_backend.
  monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, 'ram://', gpath.PosixGPath)
  paths._problem_cached.cache_clear()
  yield f'ram://test_paths_{os.getpid()}_{np.random.default_rng().integers(1 << 30)}'
  paths._problem_cached.cache_clear()


@pytest.mark.parametrize('uri, problem', [
    ('foo://bucket/run', 'etils.epath knows no foo:// paths'),
    ('s3://bucket/run', 'no s3:// filesystem')])
def test_a_scheme_with_no_backend_is_refused_and_nothing_is_written(tmp_path, monkeypatch, uri,
                                                                    problem):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match=f'--workdir=.{uri}.: no storage backend .*{problem}'):
    config_checks.check_workdir(uri)
  config = ml_collections.ConfigDict({'data': {'data_dir': uri}, 'init_from': ''})
  with pytest.raises(ConfigError, match='config.data.data_dir='):
    config_checks.check_storage(config)
  config = ml_collections.ConfigDict({'data': {}, 'init_from': f'hf:{uri}'})
  with pytest.raises(ConfigError, match='config.init_from='):
    config_checks.check_storage(config)
  assert os.listdir(tmp_path) == []  # Before: a local folder named 'foo:' (or 's3:').


def test_local_paths_and_uris_join_as_before():
  assert paths.join('/tmp/run', 'checkpoints', '10') == '/tmp/run/checkpoints/10'
  assert paths.join('run', 'x') == 'run/x' and paths.absolute('run') == os.path.abspath('run')
  assert paths.join('gs://bucket/run', 'config.json') == 'gs://bucket/run/config.json'
  assert paths.absolute('gs://bucket/run') == 'gs://bucket/run'
  assert [paths.scheme(p) for p in ('gs://b', 'GS://b', '/gs:/b', 'run', 'a:b')] == [
      'gs', 'gs', None, None, None]


def test_a_workdir_on_a_uri_is_written_through_its_backend(ram_scheme, tmp_path, monkeypatch):
  """What a run writes outside its checkpoints: config.json (and the older one kept aside),
  provenance.json, metrics.jsonl (appended, then cut back on resume), TensorBoard events, the
  confusion matrix and the tokenizer, all under the URI, nothing on the local disk."""
  monkeypatch.chdir(tmp_path)
  workdir = ram_scheme + '/run'
  config_checks.check_workdir(workdir)
  config = ml_collections.ConfigDict({'seed': 0})
  text = train.write_config(workdir, config)
  config.seed = 1
  train.write_config(workdir, config)
  assert tf.io.gfile.GFile(f'{workdir}/config.1.json').read() == text
  provenance.write(workdir, text)
  assert json.loads(paths.read_text(f'{workdir}/provenance.json'))['config_hash']
  writer = metrics.MetricWriter(workdir)
  for step in (1, 2, 3):
    writer.write(step, 'train', {'loss': float(step)})
  writer.close()
  lines = tf.io.gfile.GFile(f'{workdir}/metrics.jsonl').read().splitlines()
  assert [json.loads(x)['step'] for x in lines] == [1, 2, 3]
  assert metrics.truncate_jsonl(f'{workdir}/metrics.jsonl', 2) == 1
  assert tf.io.gfile.listdir(f'{workdir}/tensorboard')  # An event file.
  metrics.save_confusion_png(np.eye(2, dtype=np.int64), f'{workdir}/confusion_matrix.png', 'eval')
  assert tf.io.gfile.GFile(f'{workdir}/confusion_matrix.png', 'rb').read().startswith(b'\x89PNG')
  vocab = tokenizers.SentencePiece.train(['to be or not to be\n' * 50], 12)
  vocab.save(paths.join(workdir, tokenizers.FILE))
  assert tokenizers.load_tokenizer(paths.join(workdir, tokenizers.FILE)) == vocab
  assert sorted(tf.io.gfile.listdir(workdir)) == [
      'config.1.json', 'config.json', 'confusion_matrix.png', 'metrics.jsonl', 'provenance.json',
      'tensorboard',
      'vocab.json']
  assert os.listdir(tmp_path) == []
  assert jax.process_index() == 0  # (write_config writes on process 0 only.)


def test_a_data_dir_on_a_uri_caches_its_arrays_there(ram_scheme):
  data_dir = ram_scheme + '/tfds'
  version = f'{data_dir}/toy/1.0.0'
  paths.makedirs(version)
  paths.write_text(f'{version}/dataset_info.json', '{}')
  arrays = {'x': np.arange(4)}
  cache = tfds_build._cache_path('toy', 'train', data_dir)
  assert cache == f'{version}/arrays-train.npz'
  with pytest.raises(tf.errors.NotFoundError):
    tf.io.gfile.stat(cache)
  np.savez(tmp := f'/tmp/{os.getpid()}_toy.npz', **arrays)
  paths.get(cache).write_bytes(open(tmp, 'rb').read())
  os.remove(tmp)
  np.testing.assert_array_equal(tfds_build.read_cache('toy', 'train', data_dir)['x'], arrays['x'])


def test_dryrun_writes_and_sampling_reads_a_uri_workdir(ram_scheme, tmp_path, monkeypatch):
  """--mode=dryrun writes dryrun.json under the URI; --mode=sample finds a URI's checkpoints (it
  listed them with os.listdir, so a URI workdir had 'No checkpoint'), then needs the tokenizer."""
  monkeypatch.chdir(tmp_path)
  workdir = ram_scheme + '/run'
  config = base_config()
  config.batch_size, config.model.widths = 8, (16,)
  batch = {'inputs': np.zeros((8, 28, 28, 1), np.float32), 'targets': np.zeros((8,), np.int32)}
  fake = Dataset(train_batch=lambda step: batch, eval_batches=lambda: iter(()),
                 num_eval_examples=0, meta=Meta(task='classification', num_classes=10))
  monkeypatch.setattr(dryrun.data, 'get_dataset', lambda *args, **kwargs: fake)
  report = dryrun.dryrun(config, workdir)
  assert json.loads(paths.read_text(f'{workdir}/dryrun.json'))['num_params'] == report['num_params']
  paths.makedirs(f'{workdir}/checkpoints/5')
  with pytest.raises(ConfigError, match='vocab.json is missing'):
    sample.sample_from_workdir(shakespeare_char.get_config('cpu'), workdir, prompt='a',
                               num_tokens=4, temperature=1.0, top_k=0, seed=0)
  assert os.listdir(tmp_path) == []
