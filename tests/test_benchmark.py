"""research/tools/benchmark.py: the report on every experiment file (SST-2's varying batch widths
included) and the peak override. Nothing here asserts speed. The FLOP formulas and the peak table:
tests/test_flops.py; `launch.py --mode=benchmark`: tests/integration/test_launch_modes.py."""

import glob
import importlib
import json
import os

import pytest
from conftest import REPO
from helpers import tiny_lm_config

from research.tools import benchmark


def test_benchmark_reports_and_writes_json(data_dir, tmp_path, capsys):
  config = tiny_lm_config(data_dir)
  config.log_every_steps = 5
  config.benchmark.update(warmup_steps=1, timed_steps=2, loop_log_intervals=1)
  report = benchmark.benchmark(config, str(tmp_path))
  out = capsys.readouterr().out
  for row in ('compile', 'step (bare)', 'model FLOPs/step', 'MFU', 'CPU time', 'full loop',
              'memory/device'):
    assert row in out
  saved = json.loads((tmp_path / 'benchmark.json').read_text())
  assert saved['model_flops_per_step'] == report['model_flops_per_step'] > 0
  assert saved['tokens_per_sec'] == pytest.approx(16 * 32 * saved['steps_per_sec'])
  assert 0 < saved['mfu'] < 1 and saved['peak_source'].endswith('(whole host)')
  assert 0 < saved['mfu_cpu_time'] < 1 and saved['cpu_seconds_per_step'] > 0
  assert saved['loop']['steps'] == 5 and 0 <= saved['loop']['input_wait_frac'] < 1
  assert saved['loop']['cpu_seconds_per_step'] > 0 and saved['loop_overhead_cpu_frac'] is not None
  assert saved['user_seconds_per_step'] > 0 and saved['minor_page_faults_per_step'] >= 0
  assert len(saved['step_seconds_each_run']) == 2  # Bare steps before and after the loop.
  assert saved['memory_per_device_bytes']['peak_estimate'] > 0
  assert not os.path.exists(tmp_path / 'loop_run')  # The loop's scratch run is removed.


# Every experiment file at its smallest preset (gpt2_small has only its full size: shrunk here so a
# CPU test runs it), SST-2 with its length buckets on (the :tiny presets turn them off), so batches
# change width from step to step. A few steps each; the peak is given, not measured.
BENCH_CASES = {
    'mnist_mlp': ('smoke', {}),
    'shakespeare_char': ('tiny', {}),
    'gpt2_tiny_shakespeare': ('tiny', {}),  # Needs ../shared/fixtures/hf/gpt2_tiny.
    'lm_corpus': ('tiny', {'data.packing': True}),  # Tiny Shakespeare as a corpus, packed.
    'gpt2_small': ('default', {'model.num_layers': 1, 'model.num_heads': 2, 'model.d_model': 32,
                               'data.block_size': 64, 'model.max_len': 64}),
    'mnist_vit': ('tiny', {}),
    'mnist1d_encoder': ('tiny', {}),
    'sst2_encoder': ('tiny', {'data.length_buckets': (16, 32), 'log_every_steps': 5,
                              'benchmark.loop_log_intervals': 1}),
    'sst2_pretrain_mlm': ('tiny', {'data.length_buckets': (16, 32)}),
    'own_data_mnist': ('smoke', {}),  # The experiment's own get_data (docs/data.md).
    'own_data_sst2': ('smoke', {}),
}


def test_every_experiment_file_has_a_benchmark_case():
  files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'experiments', '*.py'))}
  assert files - {'__init__'} == set(BENCH_CASES)


@pytest.mark.parametrize('name', sorted(BENCH_CASES))
def test_benchmark_runs_every_experiment(name, data_dir, tmp_path, capsys):
  preset, overrides = BENCH_CASES[name]
  config = importlib.import_module(f'experiments.{name}').get_config(preset)
  config.data.data_dir = data_dir
  config.benchmark.update(warmup_steps=1, timed_steps=2, loop_log_intervals=0, peak_flops=1e11)
  config.update_from_flattened_dict(overrides)
  report = benchmark.benchmark(config, str(tmp_path))
  out = capsys.readouterr().out
  saved = json.loads((tmp_path / 'benchmark.json').read_text())
  assert saved['steps_per_sec'] > 0 and saved['model_flops_per_step'] > 0 and saved['mfu'] > 0
  varies = name.startswith('sst2')
  assert saved['batch_shapes_vary'] == varies
  if varies:  # Timed at SST-2's widest bucket (data.max_len 64), and the table says so.
    assert saved['host_batch_shapes']['inputs'] == [config.batch_size, 64]
    assert f'{[config.batch_size, 64]} (the largest of the shapes training draws' in out
  if report['loop']:  # The loop sees the mix of widths: no overhead against the widest step.
    assert report['loop_overhead_frac'] is None and 'on the mix of batch widths' in out
