"""research/runtime: its checks before compute (fault specs, step_timeout_s)."""

import pytest
from helpers import mnist_smoke_config

from research import runtime
from research.errors import ConfigError


@pytest.mark.parametrize('spec', ['nan', 'nan@0', 'boom@3', 'hang@x'])
def test_bad_fault_specs_and_timeouts_are_config_errors(spec, monkeypatch):
  config = mnist_smoke_config()
  monkeypatch.setenv('RESEARCH_FAULT_INJECTION', spec)
  with pytest.raises(ConfigError, match='KIND@STEP'):
    runtime.check_config(config)
  monkeypatch.delenv('RESEARCH_FAULT_INJECTION')
  config = mnist_smoke_config()
  config.step_timeout_s = -1.0
  with pytest.raises(ConfigError, match='step_timeout_s must be >= 0'):
    runtime.check_config(config)
