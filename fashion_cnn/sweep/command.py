"""The ``fashion-cnn sweep`` command: :class:`SweepOptions` and :class:`ExecutorOptions` are its options.

The sweep file is a config of this command: ``fashion-cnn sweep --config
configs/sweeps/architecture.yaml`` reads ``space``, ``base``, ``n_trials``, ... from it, and options
on the command line override the file (``--n_trials 40``, ``--trainer.max_epochs 1``), as with
``fit --config``. This is the CLI layer: it writes its result lines to stderr; the work is done by
:func:`fashion_cnn.sweep.runner.run_sweep`.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from fashion_cnn.runs.options import GROUPS, ExecutorOptions
from fashion_cnn.sweep.spec import SweepOptions


def sweep(
    options: SweepOptions,
    run: ExecutorOptions,
    report_only: bool = False,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> int:
    """Search hyperparameters with Optuna: each trial a real fit, pruned, resumable, on any executor.

    Every trial is an MLflow child run of the sweep's parent run; its console output goes to
    <output_dir>/logs/trial-NNNN.log. At the end the best trial is tested once on the test set and
    a report (report.md, best_config.yaml, figures) is written to output_dir. docs/sweeps.md has
    the file format.

    Args:
        options: What to search and how (the sweep file's keys).
        run: Where the trials train (--executor, --workers, ...), as for ``fashion-cnn study``.
        report_only: Write the report from the trials there are; run none.
        model: Fixed model settings of every trial, e.g. --model.hidden 256.
        data: Fixed data settings of every trial, e.g. --data.batch_size 128.
        trainer: Fixed trainer settings of every trial, e.g. --trainer.max_epochs 2.
        checkpoint: Fixed checkpoint settings of every trial.
    """
    from fashion_cnn.runs.progress import ConsoleProgress
    from fashion_cnn.runs.settings import command_line, defaults_of, plain
    from fashion_cnn.sweep.runner import run_sweep
    from fashion_cnn.sweep.spec import build_spec, settings_of

    groups = {"model": model, "data": data, "trainer": trainer, "checkpoint": checkpoint}
    spec = build_spec(options, settings_of(groups))
    executor = run.build()
    if Path(sys.argv[0]).name == "fashion-cnn" and sys.argv[1:2] == ["sweep"]:
        command = shlex.join(["fashion-cnn", *sys.argv[1:]])  # as typed
    else:  # called from Python: a command that does the same
        given = {**dataclasses.asdict(options), **dataclasses.asdict(run), **plain(groups)}
        command = command_line("sweep", [], given, defaults_of(SweepOptions, ExecutorOptions, sweep), GROUPS)
    progress = ConsoleProgress(sys.stderr, "sweep", prunes=True)
    outcome = run_sweep(spec, executor, report_only, progress, command)
    best = outcome.summary.get("best")
    counts = outcome.summary.get("counts", {})
    if outcome.report is not None:
        sys.stderr.write(
            f"sweep: {counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, "
            f"{counts.get('FAIL', 0)} failed trials; report written to {outcome.report}\n"
        )
    if outcome.parent_run_id is not None:
        from mlflow.tracking import MlflowClient

        from fashion_cnn.ui import show_hint

        experiment_id = MlflowClient(spec.tracking_uri).get_run(outcome.parent_run_id).info.experiment_id
        hint = show_hint(spec.tracking_uri, experiment_id, outcome.parent_run_id)
        sys.stderr.write(f"sweep: see its runs: {hint}\n")
    if best:
        test = "  ".join(f"{k} {v:.4f}" for k, v in best["test"].items())
        sys.stderr.write(
            f"sweep: best trial {best['number']}: {options.objective} {best['value']:.4f}  {test}  "
            f"config: {spec.output / 'best_config.yaml'}\n"
        )
    return 0


__all__ = ["sweep"]
