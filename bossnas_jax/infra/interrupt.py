"""A clean stop on Ctrl-C or SIGTERM (a preempted VM) for the long loops.

    stop = interrupt.StopRequest("the run").install()   # or: with ... as stop:
    try:
      for step in ...:
        ...one step...
        if stop.requested:
          save a checkpoint; raise errors.Interrupted("stopped at ...; rerun to resume")
    finally:
      stop.restore()

The first signal only sets `requested`: the loop finishes its step, writes a checkpoint and stops
with a message, instead of a KeyboardInterrupt landing inside XLA, a data thread or a checkpoint
write (which can leave tracebacks, a half-written checkpoint or a crash at exit). A second Ctrl-C
stops at once (KeyboardInterrupt). Outside the main thread this is a no-op.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence

from bossnas_jax.infra import errors


class StopRequest:
  """Context manager: SIGINT / SIGTERM set `requested` (see the module doc)."""

  def __init__(self, what: str = "the run"):
    self.what = what
    self.requested = False
    self.signal_name = ""
    self._previous: dict[int, object] = {}

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    print(f"\n{self.signal_name}: stopping {self.what} after this step and saving a checkpoint "
          "(Ctrl-C again to stop at once).", file=sys.stderr, flush=True)

  def install(self) -> StopRequest:
    """Routes SIGINT and SIGTERM here (main thread only); `restore` undoes it."""
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def __enter__(self) -> StopRequest:
    return self.install()

  def __exit__(self, *exc) -> None:
    self.restore()

  def stopped(self, where: str, directory: str) -> errors.Interrupted:
    """The error for a stop after the checkpoint of `where` (e.g. "step 5 of 80") was written."""
    return errors.Interrupted(
        f"stopped at {where} ({self.signal_name}); its checkpoint is in {directory}: rerun the "
        "same command to resume from it.")


def stopped_at_once(where: str, directory: str, steps: Sequence[int]) -> errors.Interrupted:
  """The error for a second Ctrl-C at `where`: no checkpoint of that step; `steps` are the ones
  in `directory`."""
  kept = (f"The newest checkpoint, step {steps[-1]} in {directory}, is kept: rerun the same "
          "command to resume from it." if steps else
          "No checkpoint yet: rerunning the same command starts over.")
  return errors.Interrupted(f"stopped at {where}. {kept}")
