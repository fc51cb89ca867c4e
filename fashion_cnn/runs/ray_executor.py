"""Runs as Ray tasks: on a local Ray started for the study or sweep, or on an existing cluster.

Each run is one task of ``run_cpus`` CPUs and ``run_gpus`` GPUs (fractions share a GPU); Ray places,
schedules and retries it when its worker or node dies (a run that fails for a user reason is an
outcome, never retried). Runs on several machines must log to an MLflow tracking server and share
no local file: :meth:`RayExecutor.prepare` says so before any run starts.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Iterable
from typing import Any

from fashion_cnn.errors import ExecutorError, Interrupted, MissingDependencyError
from fashion_cnn.runs.executors import OnDone, OnStart
from fashion_cnn.runs.launch import RunSpec, launch
from fashion_cnn.tracking import is_server

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "fashion-cnn[ray]"'
CONNECT_TIMEOUT_S = 5.0
# Passed on to every task (MLflow's credentials and artifact store settings among them), so workers
# on other machines log where the driver would.
FORWARDED_ENV = (
    *("FASHION_CNN_DATA_DIR", "XDG_CACHE_HOME", "PYTHONPATH"),
    *("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"),
    *("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_S3_ENDPOINT_URL"),
    *("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    *("GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_CONNECTION_STRING"),
)


def import_ray() -> Any:
    """The ``ray`` module, or :class:`MissingDependencyError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`ExecutorError` within ``timeout`` s if nothing listens at ``host:port``."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(
            f"--ray_address {address!r} is not host:port (or auto, or ray://host:port); e.g. 10.0.0.5:6379"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ExecutorError(
            f"--ray_address {address}: no Ray cluster answers there ({exc.strerror or exc}). Start one with "
            "`ray start --head` on that machine, or check the address and port."
        ) from None


class _SignalFlag:
    """Ctrl+C and SIGTERM set a flag that the scheduling loop checks between waits.

    An exception raised by a signal handler inside ``ray.wait`` (a C extension) surfaces as a
    SystemError, so the handlers only record the signal; the loop raises Interrupted itself.
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.name = signal.Signals(signum).name

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class RayExecutor:
    """Runs runs as Ray tasks.

    Args:
        address: An existing cluster (``auto``, ``host:port``, ``ray://host:port``); None starts a
            local Ray for this command and stops it afterwards.
        workers: Runs at once. Local Ray: it gets ``workers × run_cpus`` CPUs (default: all cores).
            A cluster: at most this many tasks are in flight (default: as many as its resources take).
        run_cpus: CPUs (and torch threads) per run.
        run_gpus: GPUs per run; 0.25 puts four runs on each GPU.
        max_retries: How often a run whose worker or node died is started again.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        run_cpus: int = 1,
        run_gpus: float = 0.0,
        max_retries: int = 2,
    ) -> None:
        self.address = address
        self.workers = workers
        self.run_cpus = run_cpus
        self.threads: int | None = run_cpus
        self.run_gpus = run_gpus
        self.max_retries = max_retries
        self.slots = workers or 1
        self._ray: Any = None
        self._sigterm: Any = None  # the process's SIGTERM handler before ray.init replaced it

    def prepare(self, tracking_uri: str, shared_paths: Iterable[str] = ()) -> None:
        """Start or join Ray, then check the cluster can run the runs as configured.

        Raises:
            MissingDependencyError: Ray is not installed.
            ExecutorError: The address does not answer, no node is big enough for one run, or a
                multi-node cluster would log to a local file store or share a local file.
        """
        ray = import_ray()
        if self.address not in (None, "auto"):
            check_reachable(self.address)
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,  # each run's output goes to its own log file
            "configure_logging": False,
            "runtime_env": {"env_vars": env},
        }
        if self.address is None:
            local_cpus = os.cpu_count() or 1
            workers = self.workers or max(1, local_cpus // self.run_cpus)
            options["num_cpus"] = workers * self.run_cpus
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.getsignal(signal.SIGTERM)  # ray.init installs its own, for good
        try:
            # "local": a Ray of our own even where RAY_ADDRESS is set or a `ray start` cluster runs
            # here (a bare ray.init() would join those); --ray_address auto joins them.
            ray.init(address=self.address or "local", **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local Ray"
            hint = ""
            if self.address not in (None, "auto") and "RAY_AUTH_MODE" not in os.environ:
                # Ray sends its token to an explicit address only in token mode (``auto`` and a
                # local start turn it on by themselves); ``ray start`` clusters require it.
                hint = (
                    "; if the cluster uses Ray's token authentication (the default of `ray start`), "
                    "set RAY_AUTH_MODE=token, with the token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
                )
            raise self._refuse(
                f"--executor ray: cannot start or join {where}: {str(exc).splitlines()[0]}{hint}"
            ) from None
        self._ray = ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = [float(n["Resources"].get("CPU", 0)) for n in nodes]
        gpus = [float(n["Resources"].get("GPU", 0)) for n in nodes]
        if self.run_cpus > max(cpus, default=0):
            raise self._refuse(
                f"--run_cpus {self.run_cpus}: no node of the cluster has that many CPUs (largest: "
                f"{max(cpus, default=0):g}); ask for fewer"
            )
        if self.run_gpus > max(gpus, default=0):
            raise self._refuse(
                f"--run_gpus {self.run_gpus:g}: no node of the cluster has that many GPUs (largest: "
                f"{max(gpus, default=0):g}); ask for fewer, or 0 to train on CPUs"
            )
        if len(nodes) > 1 and not is_server(tracking_uri):
            raise self._refuse(
                f"the Ray cluster has {len(nodes)} nodes, but the runs would log to {tracking_uri}, "
                "which only this machine can reach. Start an MLflow tracking server (see docs/studies.md, "
                "'On a cluster') and pass its URL as MLFLOW_TRACKING_URI or "
                "--trainer.logger.init_args.tracking_uri."
            )
        local = [p for p in shared_paths if "://" not in p]
        if len(nodes) > 1 and local:
            raise self._refuse(
                f"the Ray cluster has {len(nodes)} nodes, but the runs would share {local[0]}, a file only "
                "this machine can reach. Use a database every node reaches, e.g. --storage "
                "postgresql://user@host/db (docs/sweeps.md)."
            )
        capacity = sum(self._fits(c, g) for c, g in zip(cpus, gpus, strict=True))
        self.slots = max(1, min(self.workers or capacity, capacity))
        shape = (len(nodes), sum(cpus), sum(gpus), self.slots, self.run_cpus, self.run_gpus)
        log.info("Ray: %d node(s), %g CPUs, %g GPUs; %d run(s) at once (%d CPU, %g GPU each)", *shape)

    def _refuse(self, message: str) -> ExecutorError:
        """The error to raise when Ray cannot run the runs as configured, after leaving Ray."""
        self.close()
        return ExecutorError(message)

    def _fits(self, cpus: float, gpus: float) -> int:
        by_cpu = math.floor(cpus / self.run_cpus)
        by_gpu = math.floor(gpus / self.run_gpus + 1e-9) if self.run_gpus else by_cpu
        return min(by_cpu, by_gpu)

    def run(self, runs: Iterable[RunSpec], on_start: OnStart, on_done: OnDone) -> None:
        ray = self._ray
        from ray.exceptions import RayTaskError, TaskCancelledError

        task = ray.remote(launch).options(
            num_cpus=self.run_cpus,
            num_gpus=self.run_gpus,
            max_retries=self.max_retries,
            retry_exceptions=False,  # only a lost worker or node is retried
        )
        queue = iter(runs)
        pending: dict[Any, RunSpec] = {}
        stop = _SignalFlag()
        try:
            while True:
                if stop.name is not None:
                    raise Interrupted(f"stopped by {stop.name}", stop.name)
                # Keep at most `slots` tasks in flight, so "running" means running, not queued; the
                # next run is asked for only now, so it can depend on the outcomes so far.
                while len(pending) < self.slots and (spec := next(queue, None)) is not None:
                    pending[task.remote(spec)] = spec
                    on_start(spec)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    spec = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except RayTaskError as exc:
                        cause = exc.cause if isinstance(exc.cause, Exception) else exc
                        if isinstance(cause, Interrupted):
                            raise cause from None
                        raise ExecutorError(
                            f"{spec.label} failed on Ray: {type(cause).__name__}: {cause}"
                        ) from None
                    except TaskCancelledError:
                        raise Interrupted(f"{spec.label} was cancelled") from None
                    except ray.exceptions.RayError as exc:  # worker or node died, retries exhausted
                        raise ExecutorError(
                            f"{spec.label}: Ray lost the run {self.max_retries + 1} times "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                            f"see its log {spec.log_file}"
                        ) from None
                    on_done(spec, outcome)
        finally:
            stop.restore()
            for ref in pending:
                ray.cancel(ref, force=True)  # kills the worker processes: nothing keeps training

    def close(self) -> None:
        """Leave Ray (stopping the local one) and give the process its SIGTERM handler back."""
        if self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
        self._ray = None
        if self._sigterm is not None:  # ray.shutdown() leaves Ray's handler installed
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
