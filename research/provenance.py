"""What produced a run: commit, package versions, devices, config hash (WORKDIR/provenance.json)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import jax

from research import paths

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-datasets',
            'tensorflow-cpu', 'ml-collections', 'absl-py', 'numpy')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_hash(config_json: str) -> str:
  return hashlib.sha256(config_json.encode()).hexdigest()[:16]


def _git(*args: str) -> str | None:
  try:
    return subprocess.run(['git', *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def provenance(config_json: str) -> dict:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  status = _git('status', '--porcelain')
  return {
      'git_commit': _git('rev-parse', 'HEAD'),
      'git_dirty': None if status is None else bool(status),
      'config_hash': config_hash(config_json),
      'command': sys.argv,
      'python': platform.python_version(),
      'packages': versions,
      'process_count': jax.process_count(),
      'devices': [f'{d.platform}:{d.device_kind}' for d in jax.devices()],
  }


def write(workdir: str, config_json: str) -> None:
  paths.get(paths.join(workdir, 'provenance.json')).write_text(
      json.dumps(provenance(config_json), indent=2))
