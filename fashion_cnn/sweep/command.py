"""The ``fashion-cnn sweep`` command: a typed function whose signature and docstring are its options.

The sweep file is a config of this very function: ``fashion-cnn sweep --config
configs/sweeps/architecture.yaml`` reads ``space``, ``base``, ``n_trials``, ... from it, and options
on the command line override the file (``--n_trials 40``, ``--trainer.max_epochs 1``), as with
``fit --config``. This is the CLI layer: it writes its result lines to stderr; the work is done by
:func:`fashion_cnn.sweep.runner.run_sweep`.
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any, Literal

from fashion_cnn.sweep.pruning import PrunerName

# The per-trial fixed settings, as --model.*, --data.*, --trainer.*, --checkpoint.* options.
GROUPS = ("model", "data", "trainer", "checkpoint")


def sweep(
    space: dict[str, Any],
    base: str | None = None,
    name: str = "sweep",
    objective: str = "val/acc",
    direction: Literal["higher", "lower"] | None = None,
    n_trials: int | None = 20,
    timeout: float | None = None,
    sampler: Literal["tpe", "random"] = "tpe",
    startup_trials: int = 10,
    pruner: PrunerName = "median",
    prune_from_epoch: int = 1,
    pruner_startup_trials: int = 5,
    prune_threshold: float | None = None,
    seed: int = 0,
    enqueue: list[dict[str, Any]] | None = None,
    storage: str | None = None,
    workers: int = 1,
    run_cpus: int | None = None,
    output_dir: str | None = None,
    experiment: str = "fashion-cnn-sweeps",
    report_only: bool = False,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> int:
    """Search hyperparameters with Optuna: each trial a real fit, pruned, resumable, many workers.

    Every trial is an MLflow child run of the sweep's parent run; its console output goes to
    <output_dir>/logs/trial-NNNN.log. At the end the best trial is tested once on the test set and
    a report (report.md, best_config.yaml, figures) is written to output_dir. docs/sweeps.md has
    the file format.

    Args:
        space: Dotted fit config keys and how to sample each: {type: int|float|categorical, low,
            high, step, log, choices, when}; e.g. {model.lr: {type: float, low: 1e-4, high: 1e-2,
            log: true}}. when: {model.norm: group} samples a key only for that value.
        base: The config every trial starts from (a path, or a packaged one: configs/ultimate.yaml).
        name: Names the Optuna study, the MLflow runs and the default output folder.
        objective: The per-epoch validation metric to optimise: val/acc, val/loss or val/acc_best.
        direction: higher or lower is better (default: the metric's own; the test set is never used).
        n_trials: Size of the search: a rerun runs what is missing; raise it to add trials.
        timeout: Seconds after which this invocation starts no new trial.
        sampler: tpe (seeded, multivariate) or random.
        startup_trials: Random trials before TPE models the results.
        pruner: median, hyperband, threshold or none; judges the objective after every epoch.
        prune_from_epoch: The first epoch at whose end a trial may be pruned (never the last).
        pruner_startup_trials: median: trials that finish unpruned before it prunes at all.
        prune_threshold: threshold: the value a trial must reach at every epoch to go on.
        seed: Seeds the sampler and every trial's training (seed_everything).
        enqueue: Trials to run first, as {key: value} over the space (e.g. the journal's model).
        storage: Optuna storage: a journal file path (default <output_dir>/optuna.journal) or a
            database URL (postgresql://user@host/db) shared by workers on several machines.
        workers: Local worker processes on the storage.
        run_cpus: torch threads per trial (default: every core; with several workers, cores / workers).
        output_dir: Report, logs, checkpoints and default storage (default sweeps/<name>).
        experiment: MLflow experiment of the parent and child runs.
        report_only: Write the report from the trials there are; run none.
        model: Fixed model settings of every trial, e.g. --model.hidden 256.
        data: Fixed data settings of every trial, e.g. --data.batch_size 128.
        trainer: Fixed trainer settings of every trial, e.g. --trainer.max_epochs 2.
        checkpoint: Fixed checkpoint settings of every trial.
    """
    arguments = dict(locals())  # first: the options only, before the imports below add names
    from fashion_cnn.study.plan import plain
    from fashion_cnn.sweep.progress import ConsoleSweepProgress
    from fashion_cnn.sweep.runner import run_sweep
    from fashion_cnn.sweep.spec import build_spec, settings_of

    given = {k: plain(v) for k, v in arguments.items()}
    settings = settings_of({group: given[group] for group in GROUPS})
    options = {k: v for k, v in given.items() if k not in ("report_only", *GROUPS)}
    spec = build_spec(**{**options, "enqueue": options["enqueue"] or ()}, settings=settings)
    outcome = run_sweep(spec, report_only, ConsoleSweepProgress(sys.stderr), _command(given))
    best = outcome.summary.get("best")
    counts = outcome.summary.get("counts", {})
    if outcome.report is not None:
        sys.stderr.write(
            f"sweep: {counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, "
            f"{counts.get('FAIL', 0)} failed trials; report written to {outcome.report}\n"
        )
    if best:
        test = "  ".join(f"{k} {v:.4f}" for k, v in best["test"].items())
        sys.stderr.write(
            f"sweep: best trial {best['number']}: {spec.objective} {best['value']:.4f}  {test}  "
            f"config: {spec.output / 'best_config.yaml'}\n"
        )
    return 0


def _command(given: dict[str, Any]) -> str:
    """The command line as typed when this process is ``fashion-cnn sweep``; else (called from
    Python) one that does the same: every option that is not its default."""
    import inspect
    from pathlib import Path

    if Path(sys.argv[0]).name == "fashion-cnn" and sys.argv[1:2] == ["sweep"]:
        return shlex.join(["fashion-cnn", *sys.argv[1:]])
    words = ["fashion-cnn", "sweep"]
    for key, param in inspect.signature(sweep).parameters.items():
        value = given.get(key)
        if value == param.default:
            continue
        if isinstance(value, dict) and key in ("model", "data", "trainer", "checkpoint"):
            words += [w for k, v in value.items() for w in (f"--{key}.{k}", _word(v))]
        else:
            words += [f"--{key}", _word(value)]
    return shlex.join(words)


def _word(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


__all__ = ["sweep"]
