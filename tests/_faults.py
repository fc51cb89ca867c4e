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
