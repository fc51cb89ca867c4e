"""The executor options shared by ``study`` and ``sweep``: both add these fields as their own.

:class:`ExecutorOptions` is the one definition of ``--executor``, ``--workers``, ``--run_cpus``,
``--run_gpus``, ``--ray_address`` and ``--max_retries``, so each means the same in both commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fashion_cnn.errors import ConfigError
from fashion_cnn.runs.executors import Executor, SerialExecutor

ExecutorName = Literal["serial", "ray"]
# Both commands' per-run settings, as --model.*, --data.*, --trainer.*, --checkpoint.* options.
GROUPS = ("model", "data", "trainer", "checkpoint")


@dataclass(frozen=True)
class ExecutorOptions:
    """Where the runs train.

    Attributes:
        executor: serial (one run after another in this process) or ray (runs in parallel).
        workers: Runs at once on Ray (local Ray default: every core / run_cpus).
        run_cpus: CPUs (and torch threads) per run (serial default: all; ray default: 1).
        run_gpus: GPUs per run on Ray; 0.25 puts four runs on each GPU.
        ray_address: An existing Ray cluster (auto, host:port); default: start a local Ray.
        max_retries: How often Ray restarts a run whose worker or node died.
    """

    executor: ExecutorName = "serial"
    workers: int | None = None
    run_cpus: int | None = None
    run_gpus: float = 0.0
    ray_address: str | None = None
    max_retries: int = 2

    def build(self) -> Executor:
        """The executor these options describe, checked.

        Raises:
            ConfigError: A setting out of range, or one the serial executor cannot honour.
        """
        if self.executor not in ("serial", "ray"):
            raise ConfigError(f"--executor {self.executor!r} is unknown; use serial (default) or ray")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: use at least 1 (runs at once)")
        if self.run_cpus is not None and self.run_cpus < 1:
            raise ConfigError(f"--run_cpus {self.run_cpus}: use at least 1 CPU per run")
        if self.run_gpus < 0:
            raise ConfigError(f"--run_gpus {self.run_gpus}: use 0 or more, e.g. 0.25 for four runs per GPU")
        if self.max_retries < 0:
            raise ConfigError(f"--max_retries {self.max_retries}: use 0 or more")
        if self.executor == "serial":
            if (self.workers or 1) > 1 or self.run_gpus or self.ray_address:
                raise ConfigError(
                    "--workers > 1, --run_gpus and --ray_address need --executor ray (the serial executor "
                    "runs one at a time in this process)"
                )
            return SerialExecutor(self.run_cpus)
        from fashion_cnn.runs.ray_executor import RayExecutor

        return RayExecutor(
            address=self.ray_address,
            workers=self.workers,
            run_cpus=self.run_cpus or 1,
            run_gpus=self.run_gpus,
            max_retries=self.max_retries,
        )
