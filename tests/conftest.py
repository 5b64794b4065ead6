"""Test setup: 8 fake CPU devices (before jax is imported) and one TFDS data dir per session.

Every in-process test runs on 8 devices, so the sharded paths are what the tests exercise. Tests
that need another device count start a subprocess (see `run_launch`).
"""

import os
import subprocess
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')
SHARED_FIXTURES = os.path.join(os.path.dirname(REPO), 'shared', 'fixtures')


def in_ci() -> bool:
  """CI=true (GitHub Actions, GitLab and most runners set it): data tests may not skip there."""
  return os.environ.get('CI', '').lower() not in ('', '0', 'false', 'no')


def shared_data(subdir: str) -> str | None:
  """`../shared/data/<subdir>` (the offline source files) when it exists, else None."""
  path = os.path.join(SHARED_DATA, subdir)
  return path if os.path.isdir(path) else None


def require_shared_data(subdir: str, root: str | None = None) -> str:
  """`../shared/data/<subdir>` (or `root`/<subdir>), or a skip without it; under CI a failure, so
  a missing data folder cannot turn into a green run that tested less."""
  root = root or SHARED_DATA  # Read at call time: tests point it elsewhere.
  path = os.path.join(root, subdir)
  if not os.path.isdir(path):
    message = f'{path} is not available (see {os.path.join(root, "README.md")})'
    if in_ci():
      pytest.fail(f'{message}; CI={os.environ["CI"]} is set, so this test must run.')
    pytest.skip(message)
  return path


def require_fixture(subdir: str) -> str:
  """`../shared/fixtures/<subdir>` (e.g. 'hf/gpt2_tiny'), skipped or failed as above."""
  return require_shared_data(subdir, SHARED_FIXTURES)


def require_slurm() -> None:
  """A reachable SLURM controller (`sinfo` answers; scripts/slurm_cluster.sh starts one), or a
  skip; under CI a failure, as for the shared data."""
  try:
    result = subprocess.run(['sinfo', '-h', '-o', '%a %t'], capture_output=True, text=True,
                            timeout=30)
    problem = None if result.returncode == 0 else (result.stderr.strip().splitlines() or
                                                   [f'exit {result.returncode}'])[-1]
  except (OSError, subprocess.TimeoutExpired) as e:
    problem = str(e)
  if problem is not None:
    message = f'no SLURM cluster is reachable ({problem}); scripts/slurm_cluster.sh start'
    if in_ci():
      pytest.fail(f'{message}; CI={os.environ["CI"]} is set, so this test must run.')
    pytest.skip(message)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """TFDS data dir shared by the session; RESEARCH_TEST_DATA_DIR reuses one across sessions."""
  return os.environ.get('RESEARCH_TEST_DATA_DIR') or str(tmp_path_factory.mktemp('tfds'))


def run_launch(args: list[str], devices: int = 1, timeout: int = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs `python launch.py ARGS` in a fresh process with `devices` fake CPU devices."""
  full_env = dict(os.environ, **(env or {}))
  full_env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch.py'), *args], cwd=REPO,
                        env=full_env, capture_output=True, text=True, timeout=timeout)
