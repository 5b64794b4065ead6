"""A short real Tiny Shakespeare run (in-process, 8 fake CPU devices) learns and samples while it
trains; `launch.py --mode=sample` then draws from its checkpoint in a fresh process, and bad prompts
fail clearly (research/tools/sample.py)."""

import json
import math
import os

import pytest
from conftest import run_launch
from helpers import LM_VOCAB, tiny_lm_config

from research.train import train_and_evaluate

CONFIG = 'experiments/shakespeare_char.py:tiny'


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('lm'))
  summary = train_and_evaluate(tiny_lm_config(data_dir), workdir)
  return workdir, summary


def test_short_run_lowers_validation_loss(trained):
  workdir, summary = trained
  evals = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))
           if json.loads(line)['split'] == 'eval']
  assert summary['num_targets'] == 55_769
  assert evals[-1]['loss'] < math.log(LM_VOCAB) - 0.7  # 4.17 -> ~3.1 measured in 60 steps.
  assert evals[-1]['loss'] < evals[0]['loss']
  assert evals[-1]['bits_per_char'] == pytest.approx(evals[-1]['loss'] / math.log(2))
  # Every character is one UTF-8 byte here: bits per byte (nats / ln 2 / bytes) is bits/char.
  assert evals[-1]['bits_per_byte'] == pytest.approx(evals[-1]['loss'] / math.log(2), rel=1e-6)
  samples = open(os.path.join(workdir, 'samples.txt')).read()
  assert samples.count('--- step') == len(evals)


def test_sampling_from_checkpoint_in_fresh_process(trained):
  workdir, _ = trained
  result = run_launch([f'--config={CONFIG}', f'--workdir={workdir}', '--mode=sample',
                       '--prompt=ROMEO:', '--num_tokens=40', '--seed=3'])
  assert result.returncode == 0, result.stderr[-2000:]
  text = result.stdout.rstrip('\n')
  assert text.startswith('ROMEO:') and len(text) >= len('ROMEO:') + 39
  chars = set(json.load(open(os.path.join(workdir, 'vocab.json')))['chars'])
  assert set(text) <= chars


def test_a_bad_sample_prompt_fails_before_training_writes_anything(data_dir, tmp_path):
  result = run_launch([f'--config={CONFIG}', f'--workdir={tmp_path}',
                       f'--config.data.data_dir={data_dir}', '--config.sample.prompt=ROMEO<3'])
  assert result.returncode == 2, result.stderr[-2000:]
  assert "error: The prompt has 1 character(s) outside the 65-symbol vocabulary: ['<']" in \
      result.stderr
  assert not (tmp_path / 'config.json').exists() and not (tmp_path / 'checkpoints').exists()


def test_sampling_bad_input_fails_clearly(trained, tmp_path):
  workdir, _ = trained
  result = run_launch([f'--config={CONFIG}', f'--workdir={workdir}', '--mode=sample',
                       '--prompt=ROMEO<3'])
  assert result.returncode != 0 and "outside the 65-symbol vocabulary: ['<']" in result.stderr
  result = run_launch([f'--config={CONFIG}', f'--workdir={tmp_path}', '--mode=sample'])
  assert result.returncode != 0 and 'No checkpoint in' in result.stderr
