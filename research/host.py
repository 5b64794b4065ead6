"""Process-wide host settings for speed: a glibc malloc that keeps the memory it frees.

XLA:CPU allocates each step's temporaries (one arena: 53 MiB for the `:cpu` LM, 1.5 GiB for the
wide one) with malloc and frees them when the step ends. glibc serves a block above its mmap
threshold (32 MiB at most), and any block over 64 MiB asked for by a thread other than the main
one, with a fresh `mmap`, unmapped again on free, and returns freed heap tops to the OS; so every
step page-faults all of its temporaries in again: 13,500 minor faults and ~30 ms of system time per
`:cpu` LM step (a quarter of its CPU time), 390,000 and ~0.9 s per wide-LM step
(docs/performance.md#system-time-page-faults). With one arena, no mmap and no trimming, the memory
a step frees serves the next step's allocations; the resident size stays at its peak.

These settings must be in place before the first thread starts (a thread keeps the arena it
got), so launch.py re-executes itself (same process id, same arguments) with them in
GLIBC_TUNABLES. RESEARCH_MALLOC_TUNING=0 keeps glibc's defaults (to compare, or off glibc).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

ENV = 'RESEARCH_MALLOC_TUNING'
TUNABLES = ':'.join([
    'glibc.malloc.arena_max=1',  # Every thread allocates from the main heap (no 64 MiB heaps).
    'glibc.malloc.mmap_max=0',  # Never mmap a block (an mmapped block is unmapped on free).
    'glibc.malloc.trim_threshold=2147483647',  # Never return a freed heap top to the OS.
    'glibc.malloc.top_pad=268435456',  # Grow the heap in big steps (address space until touched).
])


def is_glibc() -> bool:
  return platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
  """`environ` with TUNABLES added to GLIBC_TUNABLES, or None: already there, switched off
  (RESEARCH_MALLOC_TUNING=0) or not glibc."""
  current = environ.get('GLIBC_TUNABLES', '')
  if environ.get(ENV, '1') == '0' or TUNABLES in current or not is_glibc():
    return None
  return dict(environ, GLIBC_TUNABLES=f'{current}:{TUNABLES}' if current else TUNABLES)


def malloc_tuned() -> bool:
  """Whether this process runs with TUNABLES (the benchmark reports it)."""
  return is_glibc() and TUNABLES in os.environ.get('GLIBC_TUNABLES', '')


def reexec_with_malloc_tuning() -> None:
  """Replaces this process by the same command with TUNABLES, unless already set or off. Call
  before anything starts a thread or allocates much (the top of launch.py)."""
  environ = tuned_environment(os.environ)
  if environ is not None:
    sys.stdout.flush()
    os.execve(sys.executable, sys.orig_argv, environ)
