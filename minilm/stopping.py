"""Stopping a training run on request: Ctrl-C or SIGTERM (a scheduler's preemption) is noted, and the loop saves
a checkpoint and stops at the next step boundary."""

from __future__ import annotations

import signal
import threading

import torch
from accelerate import Accelerator


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM ask the loop to save and stop at the next step boundary; a second one
    stops at once. With several processes they agree at the next log line (one small all-reduce there)."""

    def __init__(self):
        self.signum, self.before = 0, {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.before[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        self.restore()  # a second signal acts at once

    def restore(self) -> None:
        for sig, handler in self.before.items():
            signal.signal(sig, handler)
        self.before = {}

    def agreed(self, acc: Accelerator, synced_step: bool) -> bool:
        """Whether to stop now: every process gives the same answer."""
        if acc.num_processes == 1:
            return bool(self.signum)
        if not synced_step:
            return False
        flag = acc.reduce(torch.tensor(float(self.signum), device=acc.device), "max")
        self.signum = self.signum or int(flag.item())
        return bool(self.signum)
