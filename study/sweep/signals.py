"""Stopping a sweep: Ctrl-C (SIGINT) or SIGTERM during `Tuner.fit` stops it gracefully through Tune's own stop; a
second signal exits at once. `SweepInterrupted` carries the exit code a shell expects (130, 143)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from study.sweep.console import console


class SweepInterrupted(Exception):
    """The sweep was stopped by Ctrl-C (SIGINT) or SIGTERM; its state is saved and `resume` continues it.
    `exit_code`: 128 + the signal's number, as a shell reports a process that signal ended (130, 143)."""

    def __init__(self, sweep: str, signum: int = signal.SIGINT) -> None:
        super().__init__(sweep)
        self.exit_code = 128 + int(signum)


def signal_label(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class Interrupts:
    """Ctrl-C (SIGINT) or SIGTERM (`kill`, a batch scheduler's preemption notice) during `Tuner.fit`: the first
    stops scheduling through Tune's own graceful stop (SIGUSR1: the experiment state is saved, running trials keep
    their last checkpoint, callbacks end and flush MLflow); a second exits at once with 128 + its number."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self.signum: int = signal.SIGINT
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # this handler decides; Tune keeps its SIGUSR1 stop
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        label = signal_label(signum)
        if self.count > 1:
            console.print(f"[red]second {label}[/red]: exiting now", highlight=False)
            os._exit(128 + signum)
        self.signum = signum
        console.print(
            f"[yellow]{label}[/yellow]: stopping the sweep (no new trials; running trials keep their last "
            f"checkpoint; MLflow is flushed). {label} again to quit at once.",
            highlight=False,
            soft_wrap=True,
        )
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt  # Tune's loop is not running yet
        os.kill(os.getpid(), signal.SIGUSR1)
