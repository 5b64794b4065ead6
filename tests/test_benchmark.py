"""--mode=benchmark: the report on every experiment file (SST-2's varying batch widths included),
gradient accumulation equal to one big-batch step, the peak override. Nothing here asserts speed;
the FLOP formulas and the peak table are tests/test_flops.py's."""

import functools
import glob
import importlib
import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest
from conftest import REPO, run_launch

import experiments.shakespeare_char as shakespeare_char
from research import models, parallel
from research.config_checks import check_train_config
from research.data.spec import Meta
from research.errors import ConfigError
from research.tools import benchmark
from research.train_step import eval_step, init_state, train_step


def test_peak_override_is_per_device():
  config = shakespeare_char.get_config('tiny')
  config.benchmark.peak_flops = 1e12
  peak, source, per_cpu_second = benchmark.peak_flops(config)
  assert peak == 1e12 * jax.device_count() and 'config.benchmark.peak_flops' in source
  assert per_cpu_second is None


def tiny_lm_config(data_dir, **overrides):
  config = shakespeare_char.get_config('tiny')
  config.data.data_dir = data_dir
  config.model.update(overrides)
  return config


def accumulation_case():
  """A 1-layer LM, SGD (updates proportional to the gradients, unlike Adam's) and a batch whose
  target masks give the micro-batches unequal weights: a mean of micro-batch means would differ."""
  model = models.get_model(ml_collections.ConfigDict(dict(
      name='transformer_lm', num_layers=1, d_model=32, num_heads=4, max_len=16)),
      Meta(task='lm', vocab_size=48, block_size=16))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 48, (32, 17)).astype(np.int32)
  mask = (rng.random((32, 16)) < np.linspace(0.1, 1.0, 32)[:, None]).astype(np.float32)
  batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'target_mask': mask}
  tx = optax.sgd(optax.constant_schedule(0.5))  # A schedule: train_step logs its LR.
  init = functools.partial(init_state, model, tx, {k: v[:1] for k, v in batch.items()}, 0)
  return model, tx, init, batch


@pytest.mark.parametrize('strategy, accum', [('jit', 4), ('pmap', 2)])
def test_accumulating_micro_batches_equals_one_big_batch_step(strategy, accum):
  model, tx, init, batch = accumulation_case()
  boxed = jax.eval_shape(init)
  layout = parallel.make_layout(ml_collections.ConfigDict(dict(
      strategy=strategy, data=-1, fsdp=1, tensor=1)), boxed, 32)
  results = []
  for k in (1, accum):
    p_train, _ = parallel.compile_steps(layout, functools.partial(
        train_step, apply_fn=model.apply, tx=tx, schedule=optax.constant_schedule(0.5),
        grad_accum_steps=k), functools.partial(eval_step, apply_fn=model.apply))
    state = layout.to_strategy(jax.jit(lambda: nn.unbox(init()),
                                       out_shardings=layout.state_sharding)())
    for _ in range(2):
      state, metrics = p_train(state, layout.put_batch(batch))
      jax.block_until_ready(metrics)
    params = [np.asarray(x) for x in jax.tree.leaves(layout.to_global(state).params)]
    results.append((params, {k: np.asarray(v).ravel()[0] for k, v in metrics.items()}))
  (big_params, big_metrics), (acc_params, acc_metrics) = results
  moved = max(np.abs(a - b).max() for a, b in zip(big_params, jax.tree.leaves(
      jax.device_get(nn.unbox(init()).params)), strict=True))
  assert moved > 1e-3  # The steps changed the params, so agreement is not that of a frozen model.
  for a, b in zip(big_params, acc_params, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for key in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(big_metrics[key], acc_metrics[key], rtol=1e-5)


def test_grad_accum_steps_must_divide_the_batch():
  config = shakespeare_char.get_config('tiny')
  config.grad_accum_steps = 3
  with pytest.raises(ConfigError, match='batch_size 16 is not divisible by grad_accum_steps 3'):
    check_train_config(config)


def test_benchmark_reports_and_writes_json(data_dir, tmp_path, capsys):
  config = tiny_lm_config(data_dir)
  config.log_every_steps = 5
  config.benchmark.update(warmup_steps=1, timed_steps=2, loop_log_intervals=1)
  report = benchmark.benchmark(config, str(tmp_path))
  out = capsys.readouterr().out
  for row in ('compile', 'step (bare)', 'model FLOPs/step', 'MFU', 'full loop', 'memory/device'):
    assert row in out
  saved = json.loads((tmp_path / 'benchmark.json').read_text())
  assert saved['model_flops_per_step'] == report['model_flops_per_step'] > 0
  assert saved['tokens_per_sec'] == pytest.approx(16 * 32 * saved['steps_per_sec'])
  assert 0 < saved['mfu'] < 1 and saved['peak_source'].endswith('(whole host)')
  assert 0 < saved['mfu_cpu_time'] < 1 and saved['cpu_seconds_per_step'] > 0
  assert saved['loop']['steps'] == 5 and 0 <= saved['loop']['input_wait_frac'] < 1
  assert saved['loop']['cpu_seconds_per_step'] > 0 and saved['loop_overhead_cpu_frac'] is not None
  assert len(saved['step_seconds_each_run']) == 2  # Bare steps before and after the loop.
  assert saved['memory_per_device_bytes']['peak_estimate'] > 0
  assert not os.path.exists(tmp_path / 'loop_run')  # The loop's scratch run is removed.


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


# Every experiment file at its smallest preset (gpt2_small has only its full size: shrunk here so a
# CPU test runs it), SST-2 with its length buckets on (the :tiny presets turn them off), so batches
# change width from step to step. A few steps each; the peak is given, not measured.
BENCH_CASES = {
    'mnist_mlp': ('smoke', {}),
    'shakespeare_char': ('tiny', {}),
    'gpt2_tiny_shakespeare': ('tiny', {}),  # Needs ../shared/fixtures/hf/gpt2_tiny.
    'gpt2_small': ('default', {'model.num_layers': 1, 'model.num_heads': 2, 'model.d_model': 32,
                               'data.block_size': 64, 'model.max_len': 64}),
    'mnist_vit': ('tiny', {}),
    'mnist1d_encoder': ('tiny', {}),
    'sst2_encoder': ('tiny', {'data.length_buckets': (16, 32), 'log_every_steps': 5,
                              'benchmark.loop_log_intervals': 1}),
    'sst2_pretrain_mlm': ('tiny', {'data.length_buckets': (16, 32)}),
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
