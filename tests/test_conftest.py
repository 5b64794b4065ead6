"""conftest.py helpers: a test that needs ../shared/data skips without it, but fails in CI."""

import conftest
import pytest


@pytest.mark.parametrize('ci, outcome', [
    (None, pytest.skip.Exception), ('', pytest.skip.Exception), ('false', pytest.skip.Exception),
    ('true', pytest.fail.Exception), ('1', pytest.fail.Exception),
])
def test_missing_shared_data_skips_outside_ci_and_fails_in_ci(ci, outcome, tmp_path, monkeypatch):
  monkeypatch.setattr(conftest, 'SHARED_DATA', str(tmp_path))
  if ci is None:
    monkeypatch.delenv('CI', raising=False)
  else:
    monkeypatch.setenv('CI', ci)
  with pytest.raises(outcome, match='mnist is not available'):
    conftest.require_shared_data('mnist')
  (tmp_path / 'mnist').mkdir()
  assert conftest.require_shared_data('mnist') == str(tmp_path / 'mnist')


@pytest.mark.parametrize('ci, outcome', [(None, pytest.skip.Exception),
                                         ('true', pytest.fail.Exception)])
def test_missing_slurm_skips_outside_ci_and_fails_in_ci(ci, outcome, tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path))  # No sinfo on it.
  if ci is None:
    monkeypatch.delenv('CI', raising=False)
  else:
    monkeypatch.setenv('CI', ci)
  with pytest.raises(outcome, match='no SLURM cluster is reachable'):
    conftest.require_slurm()
