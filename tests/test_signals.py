"""research/runtime/signals.py: the first stop signal sets a flag, a second acts at once, and
closing restores the previous handlers."""

import signal

import pytest

from research.runtime.signals import StopSignals


class Redelivered(Exception):
  pass


def raise_redelivered(signum, frame):
  raise Redelivered(signum)


@pytest.mark.parametrize('sig, previous, raised', [
    (signal.SIGINT, signal.default_int_handler, KeyboardInterrupt),
    (signal.SIGTERM, raise_redelivered, Redelivered),  # Stands in for SIGTERM's default: exit.
])
def test_first_signal_sets_a_flag_second_acts_at_once_and_close_restores(sig, previous, raised):
  # A known previous handler, not whatever the process started with: pytest run as a background
  # job of a non-interactive shell inherits SIGINT ignored, and a re-delivered SIGINT then does
  # nothing. raise_signal delivers to this thread, so the handler has run when it returns.
  saved = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
  signals = None
  try:
    signal.signal(sig, previous)
    signals = StopSignals()
    assert not signals.should_stop(at_log_point=True)
    signal.raise_signal(sig)
    assert signals.received == sig.name and signals.should_stop(at_log_point=False)
    with pytest.raises(raised):
      signal.raise_signal(sig)
    assert signal.getsignal(sig) is previous
  finally:  # Never leave a handler behind for later tests.
    if signals is not None:
      signals.close()
    for s, handler in saved.items():
      signal.signal(s, handler)
