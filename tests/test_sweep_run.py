"""research/tools/sweep_run.py: the scheduler with fake points (no training): nothing runs for an
invalid sweep, skip/resume, failure isolation, one sweep per folder, interrupts stop the points,
the progress line. Real training points end to end: tests/integration/test_sweep_launch.py."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import small_mlp_config

from research.errors import ConfigError
from research.tools import sweep as s
from research.tools import sweep_run


def test_bad_sweep_runs_nothing(tmp_path):
  def never(cmd, log):
    raise AssertionError('a point started although the sweep is invalid')

  bad = s.Sweep(s.product(s.sweep('seed', [0, 1]), s.sweep('optimizer.learing_rate', [0.1])))
  with pytest.raises(ConfigError, match='Did you mean "optimizer.learning_rate"'):
    sweep_run.run_sweep('x.py', small_mlp_config(), str(tmp_path / 'sw'), sweep=bad, start=never)
  assert not (tmp_path / 'sw').exists()


def test_a_uri_sweep_folder_is_refused_before_anything_runs(tmp_path, monkeypatch):
  """Its lock and logs are local files: a URI was checked as a workdir, then opened locally."""
  monkeypatch.chdir(tmp_path)
  sweep = s.Sweep(s.sweep('seed', [0, 1]))
  with pytest.raises(ConfigError, match="--workdir='foo://bucket/sw': a sweep's folder must be "
                                        'local'):
    sweep_run.run_sweep('x.py', small_mlp_config(), 'foo://bucket/sw', sweep=sweep,
                        start=fake_start)
  assert os.listdir(tmp_path) == []


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

  manifest = sweep_run.run_sweep('exp.py', small_mlp_config(10), str(workdir), sweep=sweep,
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
  manifest = sweep_run.run_sweep('exp.py', small_mlp_config(10), str(workdir), sweep=sweep,
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
    sweep_run.run_sweep('exp.py', small_mlp_config(), str(workdir), sweep=sweep, start=fake_start)
  holder.close()

  started = []

  def start_then_interrupt(cmd, log):  # The second start is "Ctrl-C" while the first runs.
    if started:
      raise KeyboardInterrupt
    started.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']))
    return started[0]

  with pytest.raises(KeyboardInterrupt):
    sweep_run.run_sweep('exp.py', small_mlp_config(), str(workdir), sweep=sweep, parallel=2,
                        start=start_then_interrupt, poll_seconds=0.05)
  assert started[0].poll() is not None  # Stopped, not left running.
  manifest = json.loads((workdir / 'sweep.json').read_text())
  assert [e['status'] for e in manifest['points']] == ['interrupted', 'pending', 'pending']
  sweep_run.lock_workdir(str(workdir)).close()  # The lock went with the sweep.


def test_progress_line():
  entries = [{'status': st} for st in ('done', 'failed', 'running', 'pending', 'pending')]
  line = sweep_run.progress_line(entries, [60.0, 120.0], parallel=2)
  assert line == 'sweep: 1/5 done, 1 failed, 3 left (1 running), ETA 3m00s'
