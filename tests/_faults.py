"""Fault injectors for the reliability tests, loaded by the real CLI through ``--trainer.callbacks``."""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAt(L.Callback):
    """Sends ``signum`` to this very process when training reaches ``step`` (a real signal)."""

    def __init__(self, step: int = 3, signum: int = int(signal.SIGTERM)) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self.signum == signal.SIGINT:
                raise KeyboardInterrupt  # what Python turns SIGINT into
            os.kill(os.getpid(), self.signum)


class _Once(L.Callback):
    """Calls :meth:`strike` at training ``step``, the first time only: ``marker`` remembers it, so
    the same command run again trains through."""

    def __init__(self, marker: str, step: int = 2) -> None:
        self.marker = marker
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            self.strike()

    def strike(self) -> None:
        raise NotImplementedError


class KillOnce(_Once):
    """SIGKILLs its own process, once. A real SIGKILL: no handler, no cleanup, as when the OOM
    killer or a preempted node ends a worker."""

    def strike(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class InterruptOnce(_Once):
    """Ctrl+C (KeyboardInterrupt), once."""

    def strike(self) -> None:
        raise KeyboardInterrupt


class Slow(L.Callback):
    """Sleeps ``seconds`` after every training step, so a test can act while a run is in progress."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        time.sleep(self.seconds)


class KillAtTest(L.Callback):
    """SIGKILLs its own process as the test after a fit starts (a Ray task cancelled, a node lost)."""

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        os.kill(os.getpid(), signal.SIGKILL)
