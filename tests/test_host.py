"""research/runtime/host.py: with glibc's malloc kept from unmapping and trimming, a freed
64 MiB block (bigger than any mmap threshold glibc allows) serves the next allocation without
page-faulting its memory in again. Each case runs in a fresh interpreter (malloc settings are
process-wide)."""

import platform
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = """
import ctypes, resource, sys
from research.runtime import host
if sys.argv[1] == 'keep':
  assert host.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def cycle():  # As XLA:CPU's temporaries each step: malloc, touch every page, free.
  block = libc.malloc(64 << 20)
  ctypes.memset(block, 1, 64 << 20)
  libc.free(block)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
  out = subprocess.run([sys.executable, '-c', SCRIPT, mode], cwd=REPO, check=True,
                       capture_output=True, text=True).stdout
  return int(out.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc only')
def test_freed_memory_is_reused_without_page_faults():
  pages = 4 * (64 << 20) // 4096
  assert faults('default') > pages // 2  # glibc's defaults: each cycle faults the block in again.
  assert faults('keep') < pages // 20
