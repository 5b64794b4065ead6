"""Fault injection, end to end: real `launch.py` processes killed, signalled, hung and starved.

Every run trains the same tiny MNIST MLP on 1 CPU device (40 steps; log every 5, checkpoint every
10, eval at the end). A reference run goes first, alone (it fills a shared XLA compilation cache);
the faulted runs then start together, and their resumes after them, so the module costs a few
run-times. "Bitwise" means every array of the final train state and every line of metrics.jsonl
equal the uninterrupted reference.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO
from helpers import ensure_mnist, ensure_mnist_streamed, wait_for_metrics

STEPS = 40
TINY = ['--config=experiments/mnist_mlp.py:smoke', f'--config.num_train_steps={STEPS}',
        '--config.model.widths=(16,)', '--config.batch_size=16', '--config.log_every_steps=5',
        f'--config.eval_every_steps={STEPS}', '--config.checkpoint_every_steps=10',
        '--config.progress_bar=False']
KEEP_ONE = ['--config.checkpoint.keep=1', '--config.checkpoint.best_metric=']  # LatestN(1) only.
# Read record by record through grain (one worker process) from MNIST's ArrayRecord build.
STREAM = ['--config.data.source=stream', '--config.data.workers=1']


class Runs:
  """Starts `launch.py` processes (1 device, shared compile cache) and collects their results."""

  def __init__(self, base, data_dir):
    self.base, self.data_dir = base, data_dir
    self.env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
                    JAX_COMPILATION_CACHE_DIR=str(base / 'xla_cache'),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
    self.procs, self.results = {}, {}

  def workdir(self, name):
    return str(self.base / name)

  def start(self, name, *extra, log=None, fault=''):
    """`fault`: KIND@STEP injected through RESEARCH_FAULT_INJECTION (research/runtime/faults.py)."""
    log = log or name
    args = [sys.executable, os.path.join(REPO, 'launch.py'), *TINY, *extra,
            f'--config.data.data_dir={self.data_dir}', f'--workdir={self.workdir(name)}']
    out = open(self.base / f'{log}.log', 'w')
    env = dict(self.env, RESEARCH_FAULT_INJECTION=fault)
    self.procs[log] = (subprocess.Popen(args, cwd=REPO, env=env, stdout=out,
                                        stderr=subprocess.STDOUT), out, time.monotonic())

  def wait(self, timeout=300):
    for log, (proc, out, t0) in self.procs.items():
      rc = proc.wait(timeout=timeout)
      out.close()
      self.results[log] = {'rc': rc, 'log': (self.base / f'{log}.log').read_text(),
                           'seconds': time.monotonic() - t0}
    self.procs = {}


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir):
  ensure_mnist(data_dir)
  ensure_mnist_streamed(data_dir)
  r = Runs(tmp_path_factory.mktemp('reliability'), data_dir)
  r.start('ref')
  r.wait()
  # Phase 1: every fault at once.
  r.start('term', fault='sigterm@13')
  r.start('kill', fault='sigkill@27')
  r.start('kill_stream', *STREAM, fault='sigkill@27')
  r.start('insave', *KEEP_ONE, fault='sigkill_in_save@20')
  r.start('full', *KEEP_ONE, fault='enospc_in_save@20')
  r.start('nan', fault='nan@23')
  r.start('skip', '--config.nan_policy=skip', fault='nan@23')
  # Generous: with 8 runs sharing the CPU, a first step (compile-cache load) past a few seconds
  # would trip the watchdog before step 7.
  r.start('hang', '--config.step_timeout_s=20', fault='hang@7')
  r.start('ext', '--config.num_train_steps=1000000')
  wait_for_metrics(os.path.join(r.workdir('ext'), 'metrics.jsonl'))  # Mid-run for sure.
  r.procs['ext'][0].send_signal(signal.SIGINT)  # A real Ctrl-C from outside.
  r.wait()
  r.restored = {name: complete_steps(r.workdir(name))
                for name in ('kill', 'kill_stream', 'insave', 'full')}
  # Phase 2: resume each; 'term' with the very same command.
  r.start('term', log='term_resume', fault='sigterm@13')
  r.start('kill', log='kill_resume')
  r.start('kill_stream', *STREAM, log='kill_stream_resume')
  r.start('insave', *KEEP_ONE, log='insave_resume')
  r.wait()
  print({k: (v['rc'], round(v['seconds'], 1)) for k, v in r.results.items()})
  return r


def complete_steps(workdir):
  path = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def stopped_step(log):
  line = next(x for x in log.splitlines() if x.startswith('Stopped by'))
  return int(line.split('after step ')[1].split(':')[0])


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def final_state(workdir):
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(STEPS), 'state'))
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(restored)]


def assert_bitwise_equal_to_reference(runs, name):
  want, got = final_state(runs.workdir('ref')), final_state(runs.workdir(name))
  assert len(want) == len(got) > 0
  for a, b in zip(want, got, strict=True):
    np.testing.assert_array_equal(a, b)
  assert read_jsonl(os.path.join(runs.workdir(name), 'metrics.jsonl')) == read_jsonl(
      os.path.join(runs.workdir('ref'), 'metrics.jsonl'))


def test_reference_run_finishes(runs):
  assert runs.results['ref']['rc'] == 0, runs.results['ref']['log'][-3000:]
  assert complete_steps(runs.workdir('ref'))[-1] == STEPS


def test_sigterm_saves_exits_0_and_the_same_command_resumes_bitwise(runs):
  first, resumed = runs.results['term'], runs.results['term_resume']
  assert first['rc'] == 0, first['log'][-3000:]
  assert 'Stopped by SIGTERM after step 13: checkpoint saved in' in first['log']
  assert 'Resumed from step 13' in resumed['log'] and resumed['rc'] == 0
  assert_bitwise_equal_to_reference(runs, 'term')


def test_external_sigint_mid_run_saves_that_step_and_exits_0(runs):
  result = runs.results['ext']
  assert result['rc'] == 0, result['log'][-3000:]
  step = stopped_step(result['log'])
  workdir = runs.workdir('ext')
  assert step >= 5 and complete_steps(workdir)[-1] == step  # Whatever step it was.
  assert max(m['step'] for m in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))) <= step
  data = json.load(open(os.path.join(workdir, 'checkpoints', str(step), 'data', 'metadata')))
  pending = step % 5  # Steps since the last log point travel with the checkpoint.
  assert data['step'] == step and len(data['pending_metrics'].get('loss', {}).get(
      'values', [])) == pending


# 'kill_stream' streams the data through grain: compared with the in-memory reference, so the
# streamed batches are the in-memory ones too.
@pytest.mark.parametrize('name', ['kill', 'kill_stream'])
def test_kill_9_then_rerun_resumes_from_newest_complete_checkpoint_bitwise(runs, name):
  assert runs.results[name]['rc'] == -signal.SIGKILL
  resumed = runs.results[f'{name}_resume']
  assert resumed['rc'] == 0, resumed['log'][-3000:]
  newest = (runs.restored[name] or [0])[-1]  # Async saves may still have been in flight.
  if newest:
    assert f'Resumed from step {newest}' in resumed['log']
  # Lines for steps after the checkpoint (up to 25) were written before the kill and dropped.
  assert 'lines after step' in resumed['log']
  assert_bitwise_equal_to_reference(runs, name)


def test_kill_9_mid_save_keeps_the_previous_checkpoint_and_resumes_bitwise(runs):
  assert runs.results['insave']['rc'] == -signal.SIGKILL
  assert runs.restored['insave'] == [10]  # keep=1, yet step 10 survives the failed step 20.
  resumed = runs.results['insave_resume']
  assert resumed['rc'] == 0, resumed['log'][-3000:]
  assert 'Checkpoint step 20 was interrupted while being saved' in resumed['log']
  assert 'Resumed from step 10' in resumed['log']
  assert_bitwise_equal_to_reference(runs, 'insave')


def test_disk_full_during_async_save_stops_with_a_clear_message_keeping_the_last_step(runs):
  first = runs.results['full']
  assert first['rc'] == 4, first['log'][-3000:]
  error = [x for x in first['log'].splitlines() if x.startswith('error:')]
  assert len(error) == 1 and 'The disk is full' in error[0]
  assert 'Saving step 20' in error[0] and 'step 10, is intact' in error[0]
  assert runs.restored['full'] == [10]  # keep=1: the newest complete step was never removed.


def test_nan_stops_with_diagnostic_and_never_saves_a_nan_state(runs):
  result = runs.results['nan']
  assert result['rc'] == 3, result['log'][-3000:]
  error = next(x for x in result['log'].splitlines() if x.startswith('error:'))
  assert 'Non-finite loss' in error and 'at step 23' in error and 'grad_norm=nan' in error
  assert 'last good checkpoint is step 20' in error
  workdir = runs.workdir('nan')
  assert complete_steps(workdir) == [10, 20]  # Nothing saved after the NaN.
  restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints/20/state'))
  import jax

  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored['params']))
  want = [m for m in read_jsonl(os.path.join(runs.workdir('ref'), 'metrics.jsonl'))
          if m['step'] <= 20]  # Identical up to the last good step.
  assert read_jsonl(os.path.join(workdir, 'metrics.jsonl')) == want


def test_nan_policy_skip_drops_the_update_counts_it_and_finishes(runs):
  result = runs.results['skip']
  assert result['rc'] == 0, result['log'][-3000:]
  assert 'Skipped 1 non-finite updates up to step 25 (1 in total)' in result['log']
  train = [m for m in read_jsonl(os.path.join(runs.workdir('skip'), 'metrics.jsonl'))
           if m['split'] == 'train']
  assert [(m['step'], m['nonfinite'], m['skipped_updates']) for m in train if m['step'] >= 20] \
      == [(20, 0, 0), (25, 1, 1), (30, 0, 1), (35, 0, 1), (40, 0, 1)]
  assert all(np.isfinite(m['loss']) for m in train)  # Means over the updates that happened.
  assert all(np.all(np.isfinite(x)) for x in final_state(runs.workdir('skip')))


def test_hung_step_trips_the_watchdog_with_stacks_and_exit_5(runs):
  result = runs.results['hang']
  assert result['rc'] == 5, result['log'][-3000:]
  assert 'watchdog: no progress for' in result['log'] and 's after step 7 (' in result['log']
  assert 'Current thread' in result['log'] and 'in after_step' in result['log']  # Main's stack.
