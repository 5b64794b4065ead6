"""`launch.py --mode=benchmark` and `--mode=dryrun` in fresh processes (1 and 8 fake CPU devices):
the report and its JSON file, and bad input refused with exit 2 before anything is written."""

import json
import os

import pytest
from conftest import run_launch


def test_launch_benchmark_mlp_and_bad_input(data_dir, tmp_path):
  common = ['--config=experiments/mnist_mlp.py:smoke', f'--workdir={tmp_path}', '--mode=benchmark',
            f'--config.data.data_dir={data_dir}']
  bad = run_launch(common + ['--config.benchmark.timed_steps=0'])
  assert bad.returncode == 2 and 'config.benchmark.timed_steps must be a positive' in bad.stderr
  assert not os.path.exists(tmp_path / 'benchmark.json')
  ok = run_launch(common + ['--config.benchmark.timed_steps=3', '--config.benchmark.warmup_steps=1',
                            '--config.benchmark.loop_log_intervals=0',
                            '--config.benchmark.profile_steps=2'])
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'examples/s' in ok.stdout and 'MFU' in ok.stdout and 'time by op' in ok.stdout
  saved = json.loads((tmp_path / 'benchmark.json').read_text())
  by_kind = saved['op_profile']['by_kind']  # The profiler saw the step's XLA ops.
  assert by_kind and sum(r['share'] for r in by_kind) == pytest.approx(1.0)
  assert by_kind[0]['ms_per_step'] > 0 and all(r['ms_per_step'] >= 0 for r in by_kind)
  assert saved['devices'] == 1 and saved['tokens_per_sec'] is None and saved['loop'] is None
  assert saved['model_flops_per_step'] == (4 * 784 * 256 + 6 * 256 * 10) * 128


def test_launch_dryrun_prints_the_memory_table_for_the_lm(tmp_path, data_dir):
  args = ['--config=experiments/shakespeare_char.py:tiny', '--mode=dryrun',
          f'--config.data.data_dir={data_dir}', f'--workdir={tmp_path}',
          '--config.parallel.data=2', '--config.parallel.fsdp=2', '--config.parallel.tensor=2']
  result = run_launch(args, devices=8, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  for line in ('mesh data=2 x fsdp=2 x tensor=2 on 8 cpu devices', 'parameters', 'optimizer state',
               'activations/temp', 'total (peak est.)'):
    assert line in out, out
  saved = json.load(open(os.path.join(tmp_path, 'dryrun.json')))
  assert saved['num_params'] > 0 and saved['per_device_bytes']['total'] > 0
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))  # No training happened.
  bad = run_launch(args[:-3] + ['--config.parallel.data=1', '--config.parallel.tensor=8'],
                   devices=8, timeout=300)
  assert bad.returncode == 2 and 'is sharded over mesh axes' in bad.stderr
