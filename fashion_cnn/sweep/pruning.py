"""Pruning: the Optuna pruner a sweep uses, and the Lightning callback that stops a pruned trial.

:class:`OptunaPruning` holds only plain values (storage URL, study name, trial number, metric,
pruner settings), so it pickles to whichever process runs the trial (a Ray worker) and opens the
trial there, through the storage. At the end of every validation epoch it reports the metric to the
trial (step = epochs trained, from 1) and raises :class:`~fashion_cnn.errors.Pruned` when the pruner
says so: the trial stops right there, before another epoch starts, and the sweep tells Optuna.
After the last epoch nothing is left to save, so a trial that trained its whole budget is never
pruned.

Why not optuna-integration's ``PyTorchLightningPruningCallback`` (read for optuna-integration
5.0.0; it does import ``lightning.pytorch``): it takes a live ``optuna.trial.Trial``, which does
not travel to another process; it only warns, and never prunes, when the metric is missing; and
optuna-integration is not a dependency of this package. The part that matters is the ten lines of
``on_validation_end`` below. Like it, this callback runs one process per trial (no DDP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback

from fashion_cnn.errors import Pruned, SweepError

PrunerName = Literal["median", "hyperband", "threshold", "none"]


@dataclass(frozen=True)
class PrunerSettings:
    """What builds a sweep's pruner (plain values: they travel in each trial's config).

    Attributes:
        name: median (stop a trial worse than the median of earlier trials at the same epoch),
            hyperband (successive halving over brackets), threshold (stop below/above a fixed
            value) or none.
        from_epoch: The first epoch at whose end a trial may be pruned (1: the first). Never the
            last: a trial that trained its whole budget is complete.
        startup_trials: median: trials that finish unpruned before it prunes at all.
        threshold: threshold: the value a trial must reach (at least it, for a metric where higher
            is better; at most it otherwise).
        higher_is_better: The metric's direction.
        max_epochs: The trials' epoch budget (hyperband's maximum resource).
    """

    name: PrunerName = "median"
    from_epoch: int = 1
    startup_trials: int = 5
    threshold: float | None = None
    higher_is_better: bool = True
    max_epochs: int = 1


def make_pruner(settings: PrunerSettings) -> Any:
    """The Optuna pruner of ``settings`` (steps are epochs trained, counted from 1)."""
    import optuna

    s = settings
    if s.name == "none":
        return optuna.pruners.NopPruner()
    if s.name == "median":
        # A step below n_warmup_steps is never pruned: epoch from_epoch is the first that can be.
        return optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials, n_warmup_steps=s.from_epoch)
    if s.name == "hyperband":
        # The first rung is judged at step min_resource; a bracket ends at max_resource.
        return optuna.pruners.HyperbandPruner(
            min_resource=s.from_epoch, max_resource=max(s.max_epochs, s.from_epoch), reduction_factor=3
        )
    assert s.threshold is not None
    if s.higher_is_better:
        return optuna.pruners.ThresholdPruner(lower=s.threshold, n_warmup_steps=s.from_epoch)
    return optuna.pruners.ThresholdPruner(upper=s.threshold, n_warmup_steps=s.from_epoch)


class OptunaPruning(Callback):
    """Reports the validation metric to an Optuna trial after every epoch; stops the trial if pruned.

    Args:
        storage: The sweep's Optuna storage (journal file path or database URL).
        study_name: The Optuna study.
        trial_number: The trial this run is.
        monitor: The per-epoch validation metric, e.g. val/acc.
        pruner: The pruner's settings (:class:`PrunerSettings` as a mapping).
    """

    def __init__(
        self, storage: str, study_name: str, trial_number: int, monitor: str, pruner: dict[str, Any]
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_number = trial_number
        self.monitor = monitor
        self.settings = PrunerSettings(**pruner)
        self.pruned_at: int | None = None
        self._trial: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._trial is not None:
            return
        import optuna

        from fashion_cnn.sweep.storage import open_storage

        storage = open_storage(self.storage, check=False)
        study = optuna.load_study(
            study_name=self.study_name,
            storage=storage,
            pruner=make_pruner(self.settings),
            sampler=optuna.samplers.RandomSampler(),  # never samples here; the cheapest to build
        )
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
        self._trial = optuna.trial.Trial(study, trial_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._trial is None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise SweepError(
                f"the run did not log {self.monitor} at the end of validation, so the pruner cannot judge "
                "it; use a validation metric the model logs (val/acc, val/loss, val/acc_best)"
            )
        epoch = trainer.current_epoch + 1  # epochs trained so far, this one included
        self._trial.report(float(value), step=epoch)
        if trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch:
            return  # the budget is spent: stopping now would save nothing and lose a complete trial
        if self._trial.should_prune():
            self.pruned_at = epoch
            # Lightning ends the fit, marks the MLflow run failed and re-raises; the run's outcome
            # is "pruned", and the sweep tells Optuna so.
            raise Pruned(f"pruned at the end of epoch {epoch} ({self.monitor} {float(value):.4f})")


__all__ = ["OptunaPruning", "PrunerName", "PrunerSettings", "make_pruner"]
