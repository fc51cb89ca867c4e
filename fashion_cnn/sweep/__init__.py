"""Hyperparameter sweeps with Optuna: each trial a real ``fit``, pruned, resumable, many workers.

``fashion-cnn sweep --config configs/sweeps/architecture.yaml`` (:mod:`~fashion_cnn.sweep.command`)
checks the sweep file (:mod:`~fashion_cnn.sweep.spec`, :mod:`~fashion_cnn.sweep.space`), opens the
Optuna study in its storage (:mod:`~fashion_cnn.sweep.storage`, :mod:`~fashion_cnn.sweep.search`),
trains trials as MLflow child runs of one parent (:mod:`~fashion_cnn.sweep.runner`) with pruning
after every epoch (:mod:`~fashion_cnn.sweep.pruning`), and writes a report (:mod:`~fashion_cnn.sweep.report`).
"""

from __future__ import annotations

from fashion_cnn.errors import SweepError
from fashion_cnn.sweep.pruning import OptunaPruning, PrunerSettings, make_pruner
from fashion_cnn.sweep.space import Param, SearchSpace, parse_space
from fashion_cnn.sweep.spec import VALIDATION_METRICS, SweepSpec, build_spec

__all__ = [
    "VALIDATION_METRICS",
    "OptunaPruning",
    "Param",
    "PrunerSettings",
    "SearchSpace",
    "SweepError",
    "SweepSpec",
    "build_spec",
    "make_pruner",
    "parse_space",
]
