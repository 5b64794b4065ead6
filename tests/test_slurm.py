"""research/tools/slurm.py without a cluster: resources from the Sweep and the flags, the job
script, the progress line's SLURM counts, and a missing `sbatch`. The live cluster:
tests/integration/test_slurm_launch.py."""

import pytest
from helpers import small_mlp_config

from research.errors import ConfigError
from research.tools import slurm, sweep_run
from research.tools import sweep as s


def test_flags_override_the_sweeps_resources():
  res = slurm.resources({'partition': 'gpu', 'time': '30', 'options': '--qos=short'},
                        {'time': '2:00:00', 'ntasks': None, 'cpus_per_task': 4, 'options': ''})
  assert res.sbatch_options() == ['--partition=gpu', '--time=2:00:00', '--ntasks=1',
                                  '--cpus-per-task=4', '--qos=short']


@pytest.mark.parametrize('sweep_slurm, flags, match', [
    ({'partiton': 'gpu'}, {}, r"unknown keys \['partiton'\]"),
    ({}, {'ntasks': 0}, 'ntasks must be a positive integer'),
    ({'cpus_per_task': '4'}, {}, 'cpus_per_task must be a positive integer'),
])
def test_bad_resources(sweep_slurm, flags, match):
  with pytest.raises(ConfigError, match=match):
    slurm.resources(sweep_slurm, flags)


def test_job_script_runs_every_task_and_records_the_exit_code():
  res = slurm.Resources(partition='debug', ntasks=2, options=('--mem=1G',))
  script = slurm.job_script(['python', 'launch.py', '--config.x=a b'], '/w/p 1', '/w/p 1/log',
                            'sw/p', res, '/repo')
  lines = script.splitlines()
  assert lines[0] == '#!/bin/bash'
  assert "#SBATCH '--output=/w/p 1/log'" in lines and '#SBATCH --ntasks=2' in lines
  assert '#SBATCH --mem=1G' in lines and '#SBATCH --chdir=/repo' in lines
  assert "srun python launch.py '--config.x=a b'" in lines
  assert "echo $rc > '/w/p 1/slurm_exit_code'" in lines and lines[-1] == 'exit $rc'


def test_progress_line_counts_jobs_pending_in_slurm():
  entries = [{'status': st, 'job_id': str(i)}
             for i, st in enumerate(('done', 'running', 'pending', 'pending'))]
  line = sweep_run.progress_line(entries, [], parallel=1)
  assert line == 'sweep: 1/4 done, 0 failed, 3 left (1 running, 2 pending in SLURM)'


def test_no_sbatch_is_one_error_and_nothing_written(tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path / 'bin'))
  sweep = s.Sweep([{'seed': 0}, {'seed': 1}])
  with pytest.raises(ConfigError, match='`sbatch` is not on PATH: no SLURM is reachable'):
    sweep_run.run_sweep('x.py', small_mlp_config(), str(tmp_path / 'sw'), sweep=sweep,
                        executor='slurm')
  assert not (tmp_path / 'sw').exists()


def test_parallel_with_slurm_is_refused_and_nothing_written(tmp_path):
  sweep = s.Sweep([{'seed': 0}, {'seed': 1}])
  with pytest.raises(ConfigError, match='--parallel=4 applies to --executor=local'):
    sweep_run.run_sweep('x.py', small_mlp_config(), str(tmp_path / 'sw'), sweep=sweep,
                        executor='slurm', parallel=4)
  assert not (tmp_path / 'sw').exists()


def test_sweep_carries_its_slurm_resources():
  spec = s.normalize({'points': [{'seed': 0}], 'slurm': {'time': '10'}})
  assert spec.slurm == {'time': '10'}
  with pytest.raises(ConfigError, match='must be a dict'):
    s.normalize(s.Sweep([{'seed': 0}], slurm='10'))


def test_interrupted_sweep_stops_its_jobs_and_marks_them(monkeypatch):
  # Job 1 runs, job 2 is queued; Ctrl-C while following them.
  calls = []
  monkeypatch.setattr(slurm, 'states', lambda ids: {'1': 'RUNNING', '2': 'PENDING'})
  monkeypatch.setattr(slurm, 'cancel', lambda running, queued: calls.append((running, queued)))
  polls = []

  def sleep(seconds):  # The second poll is interrupted.
    polls.append(seconds)
    if len(polls) == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(slurm.time, 'sleep', sleep)
  entries = [{'name': 'a', 'status': 'pending'}, {'name': 'b', 'status': 'pending'}]
  jobs = iter(['1', '2'])
  saved = []
  with pytest.raises(KeyboardInterrupt):
    slurm.follow_jobs(entries, submit=lambda e: e.update(job_id=next(jobs)),
                      ended=lambda e, state: None, save=lambda: saved.append(1))
  assert calls == [(['1'], ['2'])]  # SIGTERM to the running job (it saves), the queued removed.
  assert [e['status'] for e in entries] == ['interrupted', 'interrupted'] and saved


def test_a_second_submission_is_refused_while_the_first_ones_jobs_live(monkeypatch):
  monkeypatch.setattr(slurm, 'states', lambda ids: {'45': 'RUNNING', '46': 'COMPLETED'})
  with pytest.raises(ConfigError, match=r"SLURM jobs \['45'\] .* \(squeue -j 45\)"):
    slurm.refuse_while_active(['45', '46'])
  monkeypatch.setattr(slurm, 'states', lambda ids: {'45': 'FAILED', '46': 'COMPLETED'})
  slurm.refuse_while_active(['45', '46'])  # All ended: the sweep may go on.
