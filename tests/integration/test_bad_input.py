"""Bad input to `launch.py`: a short message, a non-zero exit, and no file of an existing workdir
deleted. All cases run as concurrent subprocesses against copies of one existing workdir."""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, require_shared_data, shared_data

import experiments.mnist_mlp as mnist_mlp

BASE = ['--config=experiments/mnist_mlp.py:smoke', '--config.model.widths=(16,)',
        '--config.batch_size=16', '--config.progress_bar=False']
MNIST_SOURCE = shared_data('mnist')  # None without ../shared/data/mnist.


def snapshot(workdir):
  return {os.path.relpath(p, workdir): hashlib.sha256(open(p, 'rb').read()).hexdigest()
          for p in glob.glob(f'{workdir}/**', recursive=True) if os.path.isfile(p)}


def existing_workdir(path, data_dir):
  """A workdir as a run leaves it: config.json of BASE, a checkpoint, metrics, a note."""
  config = mnist_mlp.get_config('smoke')
  config.model.widths, config.batch_size, config.progress_bar = (16,), 16, False
  config.data.data_dir = data_dir
  os.makedirs(os.path.join(path, 'checkpoints', '10', 'state'))
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(sort_keys=True, indent=2))
  for name, text in [('checkpoints/10/state/manifest.ocdbt', 'bytes'),
                     ('metrics.jsonl', '{"step": 10, "split": "train", "loss": 1.0}\n'),
                     ('notes.txt', 'mine')]:
    with open(os.path.join(path, name), 'w') as f:
      f.write(text)


def corrupt_manual_dir(path):
  """The four MNIST files, one with a flipped byte."""
  shutil.copytree(MNIST_SOURCE, path)
  victim = os.path.join(path, 't10k-labels-idx1-ubyte.gz')
  data = bytearray(open(victim, 'rb').read())
  data[100] ^= 0xFF
  open(victim, 'wb').write(bytes(data))
  return victim


def truncated_stream_build(data_dir):
  """MNIST's ArrayRecord build for streaming, as TFDS lays it out, its train file cut short."""
  path = os.path.join(data_dir, 'array_record', 'mnist', '3.0.1')
  os.makedirs(path)
  splits = [{'name': name, 'shardLengths': [str(n)],
             'filepathTemplate': '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'}
            for name, n in (('train', 60000), ('test', 10000))]
  with open(os.path.join(path, 'dataset_info.json'), 'w') as f:
    json.dump({'name': 'mnist', 'version': '3.0.1', 'fileFormat': 'array_record',
               'moduleName': 'tensorflow_datasets.image_classification.mnist',
               'splits': splits}, f)
  victim = os.path.join(path, 'mnist-train.array_record-00000-of-00001')
  for name in (victim, victim.replace('train', 'test')):
    with open(name, 'wb') as f:
      f.write(b'\0' * 70000)
  return victim


@pytest.fixture(scope='module')
def results(tmp_path_factory, data_dir):
  base = tmp_path_factory.mktemp('bad_input')
  template = str(base / 'template')
  existing_workdir(template, data_dir)
  open(base / 'a_file', 'w').close()
  victim = corrupt_manual_dir(str(base / 'manual')) if MNIST_SOURCE else None
  cases = {
      'mistyped key': ['--config.batch_sise=8'],
      'wrong type': ['--config.batch_size=abc'],
      'non-positive batch size': ['--config.batch_size=0'],
      'missing dataset': [f'--config.data.data_dir={base}/empty_data',
                          f'--config.data.manual_dir={base}/no_such_dir'],
      'unwritable workdir': [f'--workdir={base}/a_file/run'],
      'changed model on resume': ['--config.model.activation=gelu'],
      'missing feature': ['--config.data.inputs=pixels'],
      'unknown preprocessing op': ['--config.data.preprocess=value_range(0, 1)|flipp'],
      'truncated record file': [f'--config.data.data_dir={base}/stream_data',
                                '--config.data.source=stream'],
      'workdir scheme with no backend': ['--workdir=foo://bucket/run'],
      'data dir scheme with no backend': ['--config.data.data_dir=s3://bucket/tfds'],
  }
  stream_victim = truncated_stream_build(str(base / 'stream_data'))
  if victim:
    cases['corrupt source file'] = [f'--config.data.data_dir={base}/fresh_data',
                                    f'--config.data.manual_dir={base}/manual']
  procs = {}
  for name, extra in cases.items():
    workdir = str(base / name.replace(' ', '_'))
    shutil.copytree(template, workdir)
    args = [*BASE, f'--config.data.data_dir={data_dir}', f'--workdir={workdir}', *extra]
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
    procs[name] = (workdir, subprocess.Popen([sys.executable, 'launch.py', *args], cwd=REPO,
                                             env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True))
  out = {}
  for name, (workdir, proc) in procs.items():
    log, _ = proc.communicate(timeout=300)
    out[name] = {'rc': proc.returncode, 'log': log, 'workdir': workdir}
  out['template'], out['victim'], out['base'] = snapshot(template), victim, str(base)
  out['stream_victim'] = stream_victim
  return out


EXPECT = {  # case: (exit code, texts the error message must contain)
    'mistyped key': (2, ['--config.batch_sise', 'Did you mean "batch_size"?']),
    'wrong type': (1, ['--config.batch_size=abc', "invalid literal for int() with base 10: 'abc'"]),
    'non-positive batch size': (2, ['config.batch_size must be a positive integer, got 0']),
    'missing dataset': (2, ['Tried: data_dir=', 'empty_data', 'manual_dir=', 'no_such_dir']),
    'unwritable workdir': (2, ['a_file/run', 'is not writable']),
    'changed model on resume': (2, ['refusing to resume', 'model.activation: "relu" -> "gelu"']),
    'missing feature': (2, ["config.data.inputs='pixels'", 'it has: image uint8[28, 28, 1], '
                                                           'label int64[]']),
    'unknown preprocessing op': (2, ["unknown op 'flipp'", "'flip_lr'", "'value_range'"]),
    'workdir scheme with no backend': (2, ["--workdir='foo://bucket/run': no storage backend "
                                           'for foo://']),
    'data dir scheme with no backend': (2, ["config.data.data_dir='s3://bucket/tfds': no storage "
                                            'backend for s3://']),
    'corrupt source file': (2, ['t10k-labels-idx1-ubyte.gz fails the TFDS checksum',
                                'expected f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb2']),
    'truncated record file': (2, ['mnist-train.array_record-00000-of-00001 (70,000 bytes) is '
                                  'truncated or corrupt']),
}


@pytest.mark.parametrize('case', list(EXPECT))
def test_bad_input_fails_fast_with_one_clear_error_and_keeps_the_workdir(case, results):
  if case == 'corrupt source file':
    require_shared_data('mnist')  # A skip without it; a failure under CI.
  result = results[case]
  rc, texts = EXPECT[case]
  assert result['rc'] == rc, result['log'][-3000:]
  assert 'Traceback' not in result['log']
  errors = [x for x in result['log'].splitlines() if x.startswith(('error:', 'FATAL'))]
  assert len(errors) == 1, result['log'][-3000:]
  message = result['log'][result['log'].index(errors[0]):]  # The line, plus a diff if any.
  for text in texts:
    assert text in message, message
  after = snapshot(result['workdir'])
  kept = {k: v for k, v in after.items() if k in results['template']}
  assert kept == results['template']  # Nothing deleted or changed; at most files added.
  assert not glob.glob(f'{REPO}/foo:') and not glob.glob(f'{REPO}/s3:')  # No local 'foo:' folder.
  if case == 'corrupt source file':
    assert errors[0].startswith(f'error: {results["victim"]}')
    assert not glob.glob(f'{results["base"]}/fresh_data/mnist/*/dataset_info.json')
  if case == 'truncated record file':
    assert errors[0].startswith(f'error: Record file {results["stream_victim"]} ')


TOKENIZER_CASES = {  # config.data.tokenizer: texts the one error line must contain.
    'MISSING/tokenizer.json': ['MISSING/tokenizer.json', 'no such file'],
    'MISSING/x.model': ['MISSING/x.model', 'no such file'],
    'vocab.bpe': ["config.data.tokenizer='vocab.bpe' is not a tokenizer kind", "'.model'"],
    'sentencepeice': ['Did you mean "sentencepiece"?'],
}


def test_a_bad_tokenizer_fails_fast_with_one_clear_error(tmp_path):
  """A tokenizer file that is missing or of an unknown kind: exit 2 before any data is read or
  anything is written in the workdir (left empty)."""
  procs = {}
  for i, choice in enumerate(TOKENIZER_CASES):
    workdir = tmp_path / f'run{i}'
    args = ['--config=experiments/shakespeare_char.py:cpu', f'--workdir={workdir}',
            f'--config.data.data_dir={tmp_path}/no_data', '--config.progress_bar=False',
            f'--config.data.tokenizer={choice.replace("MISSING", str(tmp_path / "missing"))}']
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
    procs[choice] = (workdir, subprocess.Popen([sys.executable, 'launch.py', *args], cwd=REPO,
                                               env=env, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True))
  for choice, (workdir, proc) in procs.items():
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, log[-3000:]
    errors = [x for x in log.splitlines() if x.startswith(('error:', 'FATAL'))]
    assert len(errors) == 1 and 'Traceback' not in log, log[-3000:]
    for text in TOKENIZER_CASES[choice]:
      assert text.replace('MISSING', str(tmp_path / 'missing')) in errors[0], errors[0]
    assert not os.listdir(workdir)
    assert not os.path.exists(tmp_path / 'no_data')  # Refused before the dataset was built.
