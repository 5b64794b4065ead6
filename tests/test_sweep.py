"""Sweeps: expansion, names, checks before running, skip/resume, failure isolation, end to end."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, run_launch

from research.config import base_config
from research.errors import ConfigError
from research.tools import sweep as s
from research.tools import sweep_run

SAFE_NAME = re.compile(r'^[A-Za-z0-9._=+-]+$')


def small_config(steps: int = 10):
  c = base_config()
  c.num_train_steps = steps
  c.model.widths = (8,)
  c.model.dropout_rate = 0.0
  return c


# --- Expansion and names -----------------------------------------------------------------------


def test_product_counts_names_and_settings():
  points = s.product(s.sweep('model.widths', [(256,), [1024, 1024]]),
                     s.sweep('config.model.dropout_rate', [0.0, 0.2]),
                     s.sweep('seed', [0, 1, 2]))
  assert len(points) == 12
  assert points[3] == {'model.widths': (256,), 'model.dropout_rate': 0.2, 'seed': 0}
  assert points[-1]['model.widths'] == (1024, 1024)  # Lists become tuples, like the flags.
  names = s.point_names(points)
  assert len(set(names)) == 12 and all(SAFE_NAME.match(n) for n in names)
  assert names[0] == 'widths=256__dropout_rate=0__seed=0'
  settings = s.setting_names(points)
  assert len(set(settings)) == 4  # Seeds share a setting.
  assert settings[0] == settings[1] == settings[2] == 'widths=256__dropout_rate=0'


def test_zip_pairs_axes_and_rejects_unequal_lengths():
  points = s.zip(s.sweep('optimizer.learning_rate', [1e-3, 3e-3]),
                 s.sweep('optimizer.warmup_steps', [0, 100]))
  assert points == [{'optimizer.learning_rate': 1e-3, 'optimizer.warmup_steps': 0},
                    {'optimizer.learning_rate': 3e-3, 'optimizer.warmup_steps': 100}]
  with pytest.raises(ConfigError, match='equal length.*3.*2'):
    s.zip(s.sweep('a', [1, 2, 3]), s.sweep('b', [1, 2]))
  assert len(s.product(points, s.sweep('seed', [0, 1]))) == 4


@pytest.mark.parametrize('build, message', [
    (lambda: s.product(s.sweep('seed', [0]), s.sweep('seed', [1])), 'swept once'),
    (lambda: s.sweep('seed', []), 'no values'),
    (lambda: s.sweep('seed', 'abc'), 'list of values'),
    (lambda: s.normalize([]), 'no points'),
    (lambda: s.normalize(s.product(s.sweep('a', [1]), [])), 'no points'),
    (lambda: s.normalize([{'seed': 0}, {'seed': 0}]), 'are the same'),
    (lambda: s.normalize(s.Sweep([{'seed': 0}], baseline={'a': 1})), 'not one of its settings'),
])
def test_bad_sweeps_fail_clearly(build, message):
  with pytest.raises(ConfigError, match=message):
    build()


def test_names_stay_unique_and_short():
  close = [{'optimizer.learning_rate': 1e-3, 'model.lr': 2},
           {'optimizer.learning_rate': 1.0000001e-3, 'model.lr': 2}]  # Same '%g' spelling.
  names = s.point_names(close)
  assert len(set(names)) == 2 and all(SAFE_NAME.match(n) for n in names)
  assert names[0].startswith('learning_rate=0.001__lr=2')
  long = [{'data.name': 'x/' * 200 + str(i)} for i in range(2)]
  names = s.point_names(long)
  assert len(set(names)) == 2 and all(len(n) <= s.MAX_NAME_CHARS and SAFE_NAME.match(n)
                                      for n in names)
  # Keys with the same last part keep their full dotted names.
  names = s.point_names([{'model.dtype': 'float32', 'optimizer.dtype': 'bfloat16'}])
  assert names == ['model.dtype=float32__optimizer.dtype=bfloat16']


@pytest.mark.parametrize('value', [(1024, 1024), (256,), 0.001, 3e-05, 7, True, 'adamw'])
def test_flag_values_parse_back(value):
  text = s.flag_value(value)
  parsed = text if isinstance(value, str) else ast.literal_eval(text)
  assert parsed == value and type(parsed) is type(value)


# --- Checks before running ---------------------------------------------------------------------


def test_validate_catches_unknown_keys_types_and_bad_values():
  config = small_config()
  s.validate(config, [{'model.widths': (4, 4), 'optimizer.learning_rate': 1, 'seed': 3}])
  with pytest.raises(ConfigError, match='"model.widht".*Did you mean "model.widths"'):
    s.validate(config, [{'seed': 0}, {'model.widht': (4,)}])
  with pytest.raises(ConfigError, match='dropout_rate=.*does not fit'):
    s.validate(config, [{'model.dropout_rate': 'high'}])
  with pytest.raises(ConfigError, match='learning_rate must be a positive'):
    s.validate(config, [{'optimizer.learning_rate': -1.0}])


def test_bad_sweep_runs_nothing(tmp_path):
  def never(cmd, log):
    raise AssertionError('a point started although the sweep is invalid')

  bad = s.Sweep(s.product(s.sweep('seed', [0, 1]), s.sweep('optimizer.learing_rate', [0.1])))
  with pytest.raises(ConfigError, match='Did you mean "optimizer.learning_rate"'):
    sweep_run.run_sweep('x.py', small_config(), str(tmp_path / 'sw'), sweep=bad, start=never)
  assert not (tmp_path / 'sw').exists()


def test_mnist_experiment_defines_its_ablation():
  from experiments.mnist_mlp import get_config

  sweep = s.load(os.path.join(REPO, 'experiments', 'mnist_mlp.py'))
  assert len(sweep.points) == 12 and {p['seed'] for p in sweep.points} == {0, 1, 2}
  assert sweep.baseline == {'model.widths': (1024, 1024), 'model.dropout_rate': 0.2}
  s.validate(get_config(), sweep.points)


# --- Skip, resume and failures (fake points: the scheduler without training) --------------------

FAKE_POINT = textwrap.dedent('''
    import json, os, sys
    args = dict(a.split('=', 1) for a in sys.argv[1:])
    workdir = args['--workdir']
    with open(os.path.join(workdir, 'started'), 'a') as f:
      f.write('x')
    lr = float(args['--config.optimizer.learning_rate'])
    if lr > 1:
      print('Traceback ...', flush=True)
      sys.exit('research.train.NonFiniteError: loss is nan at step 3')
    summary = {'step': 10, 'loss': float('nan') if lr == 1 else lr}
    json.dump(summary, open(os.path.join(workdir, 'summary.json'), 'w'))
''')


def fake_start(cmd, log):
  assert cmd[1].endswith('launch.py') and cmd[2] == '--config=exp.py'
  return subprocess.Popen([sys.executable, '-c', FAKE_POINT, *cmd[3:]], stdout=log,
                          stderr=subprocess.STDOUT)


def test_point_state(tmp_path):
  d = tmp_path / 'p'
  assert sweep_run.point_state(str(d), 10) == 'new'
  (d / 'checkpoints' / '5').mkdir(parents=True)
  assert sweep_run.point_state(str(d), 10) == 'resume'
  (d / 'summary.json').write_text(json.dumps({'step': 5, 'loss': 0.1}))
  assert sweep_run.point_state(str(d), 10) == 'resume'  # Asked for more steps than it ran.
  (d / 'summary.json').write_text(json.dumps({'step': 10, 'loss': 0.1}))
  assert sweep_run.point_state(str(d), 10) == 'done'
  (d / 'summary.json').write_text('{"step": 10, "loss": NaN}')
  assert sweep_run.point_state(str(d), 10) == 'nonfinite'


def test_skip_resume_and_failure_isolation(tmp_path):
  workdir = tmp_path / 'sw'
  sweep = s.Sweep(s.product(s.sweep('optimizer.learning_rate', [1e-3, 1e6, 2e-3, 1.0, 3e-3]),
                            s.sweep('seed', [0])))
  names = s.point_names(sweep.points)
  done_dir, resume_dir = workdir / names[0], workdir / names[2]
  done_dir.mkdir(parents=True)
  (done_dir / 'summary.json').write_text(json.dumps({'step': 10, 'loss': 0.5}))
  (done_dir / 'keep.txt').write_text('finished work')
  (resume_dir / 'checkpoints' / '4').mkdir(parents=True)

  manifest = sweep_run.run_sweep('exp.py', small_config(10), str(workdir), sweep=sweep,
                                 shared={'data.data_dir': '/d'}, parallel=2, start=fake_start,
                                 poll_seconds=0.05)
  by_name = {e['name']: e for e in manifest['points']}
  assert [by_name[n]['status'] for n in names] == ['done', 'failed', 'done', 'failed', 'done']
  assert by_name[names[0]]['skipped'] and not (done_dir / 'started').exists()
  assert (done_dir / 'keep.txt').read_text() == 'finished work'  # Never deleted.
  assert by_name[names[2]]['resumed'] and (resume_dir / 'started').read_text() == 'x'
  assert 'NonFiniteError: loss is nan' in by_name[names[1]]['error']
  assert 'non-finite' in by_name[names[3]]['error']
  log = (workdir / names[4] / 'launch.log').read_text()
  assert '--config.data.data_dir=/d' in log and '--config.seed=0' in log
  assert json.loads((workdir / 'sweep.json').read_text())['points'] == manifest['points']
  assert manifest['baseline'] == 'learning_rate=0.001'

  # Again: finished points are skipped, failed ones retried, nothing else started.
  manifest = sweep_run.run_sweep('exp.py', small_config(10), str(workdir), sweep=sweep,
                                 start=fake_start, poll_seconds=0.05)
  started = {n: (workdir / n / 'started').read_text() for n in names[1:]}
  assert started == {names[1]: 'xx', names[2]: 'x', names[3]: 'x', names[4]: 'x'}
  assert [e['status'] for e in manifest['points']] == ['done', 'failed', 'done', 'failed', 'done']
  kept = manifest['points'][2]  # Skipped now; its record from the first run is kept.
  assert kept['skipped'] and kept['returncode'] == 0 and kept['wall_seconds'] is not None


def test_one_sweep_per_folder_and_interrupts_stop_the_points(tmp_path):
  workdir = tmp_path / 'sw'
  workdir.mkdir()
  sweep = s.Sweep(s.sweep('seed', [0, 1, 2]))
  holder = sweep_run.lock_workdir(str(workdir))
  with pytest.raises(ConfigError, match='Another sweep'):
    sweep_run.run_sweep('exp.py', small_config(), str(workdir), sweep=sweep, start=fake_start)
  holder.close()

  started = []

  def start_then_interrupt(cmd, log):  # The second start is "Ctrl-C" while the first runs.
    if started:
      raise KeyboardInterrupt
    started.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']))
    return started[0]

  with pytest.raises(KeyboardInterrupt):
    sweep_run.run_sweep('exp.py', small_config(), str(workdir), sweep=sweep, parallel=2,
                        start=start_then_interrupt, poll_seconds=0.05)
  assert started[0].poll() is not None  # Stopped, not left running.
  manifest = json.loads((workdir / 'sweep.json').read_text())
  assert [e['status'] for e in manifest['points']] == ['interrupted', 'pending', 'pending']
  sweep_run.lock_workdir(str(workdir)).close()  # The lock went with the sweep.


def test_progress_line():
  entries = [{'status': st} for st in ('done', 'failed', 'running', 'pending', 'pending')]
  line = sweep_run.progress_line(entries, [60.0, 120.0], parallel=2)
  assert line == 'sweep: 1/5 done, 1 failed, 3 left (1 running), ETA 3m00s'


# --- End to end: real training points through launch.py ----------------------------------------


def test_sweep_end_to_end_with_a_failing_point(tmp_path, data_dir):
  exp = tmp_path / 'exp.py'
  exp.write_text(textwrap.dedent('''
      from experiments.mnist_mlp import get_config as mnist_config
      from research.tools.sweep import product, sweep

      def get_config():
        c = mnist_config('smoke')
        c.num_train_steps, c.log_every_steps = 8, 4
        c.eval_every_steps = c.checkpoint_every_steps = 4
        c.optimizer.warmup_steps = 0
        c.model.widths = (32,)
        return c

      def get_sweep():  # The failing point comes first: the other must still run.
        return product(sweep('optimizer.learning_rate', [1e30, 1e-3]), sweep('seed', [0]))
  '''))
  workdir = tmp_path / 'sw'
  args = [f'--config={exp}', f'--workdir={workdir}', f'--config.data.data_dir={data_dir}']
  result = run_launch([*args, '--sweep'])
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'error: 1 of 2 sweep points failed' in result.stderr
  manifest = json.loads((workdir / 'sweep.json').read_text())
  assert [p['status'] for p in manifest['points']] == ['failed', 'done']
  assert re.search('non-?finite', manifest['points'][0]['error'], re.I)  # The trainer's message.
  good = workdir / manifest['points'][1]['name']
  assert json.loads((good / 'summary.json').read_text())['step'] == 8

  from research.tools.report import write_report  # The CLI path is tested in test_report.py.

  write_report(str(workdir))
  report = (workdir / 'report.md').read_text()
  failed_section = report.split('## Failed and incomplete points')[1].split('## Points')[0]
  assert manifest['points'][0]['name'] in failed_section
  assert re.search('non-?finite', failed_section, re.I)
  assert '1 done, 1 failed' in report
  assert (workdir / 'curves_accuracy.png').exists()
