"""A corpus from text files trains through launch.py (plain and packed), sampling reuses its
tokenizer, and a truncated shard fails before any compute with the workdir unchanged."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO
from test_bad_input import snapshot

CONFIG = 'experiments/lm_corpus.py:tiny'
# 300 short documents of made-up words (ASCII), blank-line separated: about 20k characters.
WORDS = ['the', 'king', 'queen', 'speaks', 'and', 'all', 'listen', 'to', 'her', 'words']


def write_corpus(path):
  docs = [' '.join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(5 + i % 9)).capitalize()
          + '.\n\n' for i in range(300)]
  path.write_text(''.join(docs))


def launch(workdir, *extra):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.Popen([sys.executable, 'launch.py', f'--config={CONFIG}',
                           f'--workdir={workdir}', '--config.num_train_steps=4',
                           '--config.eval_every_steps=4', *extra],
                          cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp('lm_corpus')
  write_corpus(base / 'text.txt')
  args = [f'--config.data.corpus.train_files={base}/text.txt',
          f'--config.data.corpus.cache_dir={base}/cache', '--config.data.corpus.eval_fraction=0.1']
  # Started together: one builds the shards (under a lock), the other waits and reuses them.
  procs = {'plain': launch(base / 'plain', *args),
           'packed': launch(base / 'packed', *args, '--config.data.packing=True')}
  out = {name: (proc.communicate(timeout=600)[0], proc.returncode)
         for name, proc in procs.items()}
  out['base'], out['args'] = base, args
  return out


@pytest.mark.parametrize('name', ['plain', 'packed'])
def test_corpus_trains_and_reports_bits_per_byte(runs, name):
  log, rc = runs[name]
  assert rc == 0, log[-3000:]
  workdir = runs['base'] / name
  evals = [json.loads(x) for x in open(workdir / 'metrics.jsonl') if '"eval"' in x]
  assert evals and evals[-1]['bits_per_byte'] == pytest.approx(
      evals[-1]['loss'] / math.log(2), rel=1e-6)  # ASCII characters: one byte per token.
  assert json.load(open(workdir / 'vocab.json'))['type'] == 'char'
  assert 'bits/byte' in log


def test_packed_eval_skips_document_starts(runs):
  """Packing leaves out the targets that start a document (one per document but the first)."""
  plain, packed = [[json.loads(x) for x in open(runs['base'] / n / 'metrics.jsonl')
                    if '"eval"' in x][-1] for n in ('plain', 'packed')]
  assert 0 < plain['num_targets'] - packed['num_targets'] < plain['num_targets'] / 10


def test_sampling_reuses_the_saved_tokenizer(runs):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  result = subprocess.run([sys.executable, 'launch.py', f'--config={CONFIG}',
                           f'--workdir={runs["base"]}/plain', '--mode=sample', '--prompt=The k',
                           '--num_tokens=20', *runs['args']],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'The k' in result.stdout


def test_truncated_shard_fails_fast_and_keeps_the_workdir(runs):
  base = runs['base']
  shard = glob.glob(f'{base}/cache/*/train-00000.tokens')[0]
  with open(shard, 'r+b') as f:
    f.truncate(os.path.getsize(shard) - 2)
  before = snapshot(base / 'plain')
  proc = launch(base / 'plain', *runs['args'], '--config.num_train_steps=8')
  log = proc.communicate(timeout=300)[0]
  assert proc.returncode == 2, log[-3000:]
  errors = [x for x in log.splitlines() if x.startswith('error:')]
  assert len(errors) == 1 and 'train-00000.tokens is truncated or corrupt' in errors[0], log
  assert 'Traceback' not in log
  assert snapshot(base / 'plain') == before


def test_the_old_tokenizer_key_is_refused(runs):
  """data.corpus.tokenizer became data.tokenizer: the old key is one error line (exit 2), not
  silently ignored (characters instead of the tokenizer asked for)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  result = subprocess.run([sys.executable, 'launch.py', f'--config={CONFIG}',
                           f'--workdir={runs["base"]}/old_key', *runs['args'],
                           f'--config.data.corpus.tokenizer={runs["base"]}/plain/vocab.json'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'config has no key "data.corpus.tokenizer"' in result.stderr
  assert not os.path.exists(runs['base'] / 'old_key')
