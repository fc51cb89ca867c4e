"""The ``fashion-cnn study`` command: a typed function whose signature and docstring are its options.

Where the runs train comes from :class:`~fashion_cnn.runs.options.ExecutorOptions`, the same options
as ``fashion-cnn sweep``. This is the CLI layer; the work is done by
:func:`fashion_cnn.study.runner.run_studies`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from fashion_cnn.runs.options import GROUPS, ExecutorOptions


def study(
    studies: list[str],
    run: ExecutorOptions,
    seeds: int | list[int] | None = None,
    max_seeds: int | None = None,
    output_dir: str | None = None,
    experiment: str = "fashion-cnn-studies",
    combined_report: str | None = None,
    compare_with: str | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    reuse: bool = True,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> int:
    """Run every variant x seed of one or more studies and judge their claims.

    Each variant and seed is an MLflow child run of the study's parent run; finished runs are
    skipped on a rerun and identical runs reused. A report (report.md, figures, results.json) is
    written per study.

    Args:
        studies: Study files (paths, or packaged names: studies/dropout); docs/studies.md.
        run: Where the runs train (--executor, --workers, ...), as for ``fashion-cnn sweep``.
        seeds: Seed count (5: seeds 0-4) or list ([0,1,7]); default: each study's own.
        max_seeds: Adaptive seeds: then add seeds in planned blocks (3 -> 5 -> 8 -> 12) only to the
            variants of claims still undecided, up to this many per variant; error rates stay at
            alpha (docs/studies.md, "Adaptive seeds").
        output_dir: Report folder (default studies/<name>; with several studies, OUTPUT_DIR/<name>).
            Each run's checkpoints and log go under it.
        experiment: MLflow experiment of the parent and child runs.
        combined_report: Also write one Markdown document over all the studies to this file (and
            its results to the .json beside it).
        compare_with: Another combined report (.md or .json) to set this one's verdicts against:
            adds a table of the claims whose verdict differs (e.g. a short and a full budget).
        dry_run: Show the plan; run nothing.
        report_only: Write the reports from the runs already finished; run nothing.
        reuse: Copy a finished run with the same resolved config and seed instead of training.
        model: Model settings for every run, e.g. --model.dropout 0.3.
        data: Data settings for every run, e.g. --data.batch_size 128.
        trainer: Trainer settings for every run, e.g. --trainer.max_epochs 1.
        checkpoint: Checkpoint settings for every run, e.g. --checkpoint.save_last false.
    """
    given = {k: v for k, v in locals().items() if k not in ("studies", "run")}
    from fashion_cnn.errors import ConfigError, StudyError
    from fashion_cnn.lightning_cli import ConfigResolver
    from fashion_cnn.runs.progress import ConsoleProgress
    from fashion_cnn.runs.settings import as_args, command_line, defaults_of
    from fashion_cnn.study.plan import run_overrides
    from fashion_cnn.study.runner import run_studies
    from fashion_cnn.study.spec import parse_seeds

    groups = {k: given[k] for k in GROUPS}
    overrides = as_args(run_overrides(groups))
    chosen = parse_seeds(seeds, "--seeds") if seeds is not None else None
    executor = run.build()
    resolver = ConfigResolver()
    try:  # the per-run settings are checked now, by the CLI's own parser, not when a run starts
        resolver.resolve(None, overrides)
    except ConfigError as exc:
        raise StudyError(f"per-run settings {' '.join(overrides)}: {exc}") from None
    # The command that trains these runs, canonical: files, then every option that is not its
    # default (--report_only and --dry_run left out: they train nothing).
    trains = {k: v for k, v in given.items() if k not in ("report_only", "dry_run", *GROUPS)}
    trains = {**trains, **dataclasses.asdict(run), **groups}
    command = command_line("study", studies, trains, defaults_of(ExecutorOptions, study), GROUPS)
    run_studies(
        studies,
        overrides=overrides,
        seeds=chosen,
        output=output_dir,
        experiment=experiment,
        dry_run=dry_run,
        report_only=report_only,
        reuse=reuse,
        combined_report=combined_report,
        compare_with=compare_with,
        command=command,
        executor=executor,
        progress=ConsoleProgress(sys.stderr, "study"),
        resolver=resolver,
        max_seeds=max_seeds,
    )
    return 0
