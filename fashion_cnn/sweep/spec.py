"""A sweep's settings, checked: the space against the CLI's own parser, the objective, the budget.

:func:`build_spec` takes the ``sweep`` command's arguments (the sweep file is a config of that
command, so they arrive already typed) and returns a :class:`SweepSpec`, or raises
:class:`~fashion_cnn.sweep.space.SweepError` naming the key and the fix. Everything is checked
before the first trial: every key of the space is resolved through ``fit``'s parser at both ends of
its range and at every choice (an unknown key, or a value the config refuses, is named), and the
model is built at each of them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fashion_cnn.configs import resolve_config
from fashion_cnn.errors import ConfigError, SweepError
from fashion_cnn.lightning_cli import ConfigResolver
from fashion_cnn.runs.settings import NAME, as_args, flatten, plain
from fashion_cnn.sweep.pruning import PrunerName, PrunerSettings
from fashion_cnn.sweep.space import SearchSpace, SpaceParam, parse_space
from fashion_cnn.sweep.storage import locate
from fashion_cnn.tracking import resolve_tracking_uri

DEFAULT_EXPERIMENT = "fashion-cnn-sweeps"

# What FashionCNN logs at the end of every validation epoch (validation_step and
# on_validation_epoch_end), and which way is better. tests/test_sweep.py checks a real run logs them.
VALIDATION_METRICS = {"val/acc": "higher", "val/acc_best": "higher", "val/loss": "lower"}

# Settings the sweep controls for every trial; neither the space nor the fixed settings may set them.
RESERVED = {
    "seed_everything": "use the sweep's seed:",
    "run_name": "the sweep names its trials <name>-trial<N>",
    "config": "use the sweep's base:",
    "output_dir": "use the sweep's output_dir:",
    "ckpt_path": "every trial starts afresh",
    "test_after_fit": "trials never look at the test set; the best trial is tested once at the end",
    "checkpoint.monitor": "each trial keeps the checkpoint that is best on the objective",
    "checkpoint.mode": "each trial keeps the checkpoint that is best on the objective",
    "checkpoint.dirpath": "trials file their checkpoints under <output_dir>/runs",
    "trainer.logger.init_args.tags": "the sweep tags its runs itself",
    "trainer.logger.init_args.run_id": "the sweep creates its runs itself",
    "trainer.logger.init_args.run_name": "the sweep names its runs",
    "trainer.logger.init_args.experiment_name": "use the sweep's experiment:",
}


@dataclass(frozen=True)
class SweepOptions:
    """Search hyperparameters with Optuna: each trial a real fit, pruned, resumable, on any executor.

    The one definition of the ``sweep`` command's options (a sweep file is a config of them);
    :func:`build_spec` checks them.

    Attributes:
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
            database URL (postgresql://user@host/db) shared by drivers on several machines.
        output_dir: Report, logs, checkpoints and default storage (default sweeps/<name>).
        experiment: MLflow experiment of the parent and child runs.
    """

    space: dict[str, Any]
    base: str | None = None
    name: str = "sweep"
    objective: str = "val/acc"
    direction: Literal["higher", "lower"] | None = None
    n_trials: int | None = 20
    timeout: float | None = None
    sampler: Literal["tpe", "random"] = "tpe"
    startup_trials: int = 10
    pruner: PrunerName = "median"
    prune_from_epoch: int = 1
    pruner_startup_trials: int = 5
    prune_threshold: float | None = None
    seed: int = 0
    enqueue: list[dict[str, Any]] | None = None
    storage: str | None = None
    output_dir: str | None = None
    experiment: str = DEFAULT_EXPERIMENT


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep: the options as given, and what :func:`build_spec` derived from them."""

    options: SweepOptions
    base: Path | None
    settings: dict[str, Any]  # fixed dotted settings of every trial (after base)
    space: SearchSpace
    higher_is_better: bool
    pruner: PrunerSettings
    storage: str  # the journal file's absolute path, or the database URL
    output: Path
    enqueue: tuple[dict[str, Any], ...]
    resolved: dict[str, Any]  # base + settings + the sweep's own, as fit resolves it
    tracking_uri: str

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.higher_is_better else "minimize"


def build_spec(
    options: SweepOptions, settings: Mapping[str, Any] | None = None, resolver: ConfigResolver | None = None
) -> SweepSpec:
    """Check a sweep's options and fixed settings (``{"trainer.max_epochs": 2}``) and resolve its base.

    Raises:
        SweepError: Naming the key, what is wrong and what would work.
    """
    o = options
    if not NAME.match(o.name):
        raise SweepError(
            f"name: {o.name!r} is not usable; use letters, digits, _ . + - (it names runs and folders)"
        )
    _check_budget(o)
    higher = _objective(o.objective, o.direction)
    checked = parse_space(o.space)
    pruner_settings = _pruner(o, higher)
    fixed = dict(settings or {})
    for key in [*fixed, *checked.keys]:
        _not_reserved(key, "space" if key in checked.keys else "settings")
    base_path = None
    if o.base is not None:
        try:
            base_path = resolve_config(o.base, "base").resolve()
        except ConfigError as exc:
            raise SweepError(str(exc)) from None
    resolver = resolver or ConfigResolver()
    args = [
        f"--seed_everything={o.seed}",
        f"--checkpoint.monitor={o.objective}",
        f"--checkpoint.mode={'max' if higher else 'min'}",
        *as_args(fixed),
    ]
    try:
        resolved = resolver.resolve(base_path, args)
    except ConfigError as exc:
        raise SweepError(f"the base config with the sweep's settings does not parse: {exc}") from None
    trainer = resolved.get("trainer") or {}
    _check_runs(resolved, trainer, pruner_settings)
    pruner_settings = dataclasses.replace(pruner_settings, max_epochs=int(trainer["max_epochs"]))
    for p in checked.params:
        _check_key(resolver, base_path, args, list(flatten(resolved)), p)
    queued = tuple(checked.check_values(dict(e), f"enqueue[{i}]") for i, e in enumerate(o.enqueue or ()))
    output = Path(o.output_dir or Path("sweeps") / o.name).absolute()
    logger_args = (trainer.get("logger") or {}).get("init_args") or {}
    return SweepSpec(
        options=o,
        base=base_path,
        settings=fixed,
        space=checked,
        higher_is_better=higher,
        pruner=pruner_settings,
        storage=locate(o.storage, output),
        output=output,
        enqueue=queued,
        resolved=resolved,
        tracking_uri=resolve_tracking_uri(logger_args.get("tracking_uri")),
    )


def settings_of(groups: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """``{"trainer": {"max_epochs": 2}}`` (as the command parses them) -> ``{"trainer.max_epochs": 2}``."""
    return flatten({group: plain(values) for group, values in groups.items() if values})


def _check_budget(o: SweepOptions) -> None:
    if o.n_trials is None and o.timeout is None:
        raise SweepError("n_trials and timeout are both unset; give the search a budget, e.g. n_trials: 20")
    if o.n_trials is not None and o.n_trials < 1:
        raise SweepError(f"n_trials: {o.n_trials}; use at least 1 (the number of trials the search grows to)")
    if o.timeout is not None and not o.timeout > 0:
        raise SweepError(f"timeout: {o.timeout}; use a number of seconds > 0, or leave it unset")
    if o.startup_trials < 0:
        raise SweepError(f"startup_trials: {o.startup_trials}; use 0 or more (random trials before TPE)")


def _objective(objective: str, direction: str | None) -> bool:
    """Whether higher is better for ``objective``; refuses the test set and metrics never logged."""
    if objective.startswith("test/"):
        raise SweepError(
            f"objective: {objective} is a test metric, and the test set is never the objective: choosing "
            "on it would leave no unbiased estimate of the result. Use a validation metric (val/acc); the "
            "best trial is evaluated once on the test set at the end"
        )
    if objective not in VALIDATION_METRICS:
        close = difflib.get_close_matches(objective, list(VALIDATION_METRICS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        logged = ", ".join(f"{k} ({v})" for k, v in VALIDATION_METRICS.items())
        raise SweepError(
            f"objective: the runs never log {objective} per validation epoch; {hint}they log {logged}"
        )
    natural = VALIDATION_METRICS[objective]
    if direction is not None and direction != natural:
        raise SweepError(
            f"direction: {direction} for {objective} would search for the worst model; {objective} is better "
            f"{natural} (leave direction unset to use that)"
        )
    return natural == "higher"


def _pruner(o: SweepOptions, higher: bool) -> PrunerSettings:
    if o.prune_from_epoch < 1:
        raise SweepError(
            f"prune_from_epoch: {o.prune_from_epoch}; use 1 or more (1: trials can stop after their first "
            "epoch)"
        )
    if o.pruner_startup_trials < 0:
        raise SweepError(f"pruner_startup_trials: {o.pruner_startup_trials}; use 0 or more")
    if (o.pruner == "threshold") != (o.prune_threshold is not None):
        raise SweepError(
            "pruner: threshold needs prune_threshold, e.g. prune_threshold: 0.5 for val/acc"
            if o.prune_threshold is None
            else f"prune_threshold is used by pruner: threshold only (pruner is {o.pruner}); remove it"
        )
    return PrunerSettings(o.pruner, o.prune_from_epoch, o.pruner_startup_trials, o.prune_threshold, higher)


def _not_reserved(key: str, where: str) -> None:
    bare = key.removeprefix("--")
    for reserved, why in RESERVED.items():
        if bare == reserved or bare.startswith(reserved + "."):
            raise SweepError(f"{where}: {bare} is set by the sweep for every trial; {why}")


def _check_runs(resolved: Mapping[str, Any], trainer: Mapping[str, Any], pruner: PrunerSettings) -> None:
    logger = trainer.get("logger") or {}
    if not (isinstance(logger, Mapping) and str(logger.get("class_path", "")).endswith("MLflowLogger")):
        raise SweepError(
            "sweeps need the MLflow logger (trainer.logger: fashion_cnn.tracking.MLflowLogger); remove the "
            "other logger from the base config"
        )
    if trainer.get("limit_val_batches") == 0:
        raise SweepError(
            "trainer.limit_val_batches is 0: the runs would never validate, so the objective would never be "
            "logged; give them validation batches"
        )
    epochs = trainer.get("max_epochs")
    if not isinstance(epochs, int) or epochs < 1:
        raise SweepError(f"trainer.max_epochs: {epochs}; sweeps need an epoch budget per trial, e.g. 3")
    if pruner.name != "none" and pruner.from_epoch >= epochs:
        raise SweepError(
            f"prune_from_epoch {pruner.from_epoch} leaves no epoch to prune at (trainer.max_epochs {epochs}; "
            "a trial is never pruned after its last epoch); lower it, raise max_epochs, or use pruner: none"
        )


def _check_key(
    resolver: ConfigResolver, base: Path | None, args: Sequence[str], known: list[str], p: SpaceParam
) -> None:
    """Resolve ``p`` at every representative value, with its conditions met; build the model there."""
    from fashion_cnn.system import FashionCNN

    where = f"space: {p.key}"
    if p.key not in known:
        close = difflib.get_close_matches(p.key, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "`fashion-cnn fit --print_config` lists the keys"
        raise SweepError(f"{where} is not a config key of fit; {hint}")
    conditions = as_args({key: allowed[0] for key, allowed in p.when})
    for value in p.representatives():
        try:
            config = resolver.resolve(base, [*args, *conditions, *as_args({p.key: value})])
        except ConfigError as exc:
            raise SweepError(f"{where}: the config refuses {value!r}: {exc}") from None
        got = flatten(config).get(p.key)
        if got != value:  # e.g. a value the parser coerced to something else
            raise SweepError(f"{where}: {value!r} resolves to {got!r}; give values of the key's own type")
        if p.key.startswith("model."):
            try:
                FashionCNN(**(config.get("model") or {}))
            except (TypeError, ValueError) as exc:
                raise SweepError(
                    f"{where}: with {p.key}={value!r} the model cannot be built: {exc}"
                ) from None


__all__ = [
    "DEFAULT_EXPERIMENT",
    "RESERVED",
    "VALIDATION_METRICS",
    "SweepOptions",
    "SweepSpec",
    "build_spec",
    "settings_of",
]
