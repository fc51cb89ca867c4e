"""Hypothesis studies: a journal claim re-run over variants x seeds, with verdicts from real statistics.

``fashion-cnn study configs/studies/dropout.yaml`` (or :func:`run_studies`) reads a study file
(:mod:`~fashion_cnn.study.spec`), resolves and hashes every variant (:mod:`~fashion_cnn.study.plan`),
trains what is missing as MLflow child runs of one parent (:mod:`~fashion_cnn.study.runner`, on an
executor of the run layer :mod:`fashion_cnn.runs`: serial or Ray), and writes a report that marks
every expected outcome (:mod:`~fashion_cnn.study.claims`) supported, not supported or inconclusive
by a stated test (:mod:`~fashion_cnn.study.verdicts`, :mod:`~fashion_cnn.study.report`).
"""

from __future__ import annotations

from fashion_cnn.errors import RunFailed, StudyError
from fashion_cnn.study.claims import CLAIM_FORMS, Claim, Metric, parse_claim
from fashion_cnn.study.plan import StudyPlan, VariantPlan, plan_study, run_overrides
from fashion_cnn.study.runner import run_studies
from fashion_cnn.study.spec import Study, Variant, load_study, parse_seeds
from fashion_cnn.study.verdicts import ALPHA, Evaluation, evaluate_claim, mean_ci, welch

__all__ = [
    "ALPHA",
    "CLAIM_FORMS",
    "Claim",
    "Evaluation",
    "Metric",
    "RunFailed",
    "Study",
    "StudyError",
    "StudyPlan",
    "Variant",
    "VariantPlan",
    "evaluate_claim",
    "load_study",
    "mean_ci",
    "parse_claim",
    "parse_seeds",
    "plan_study",
    "run_overrides",
    "run_studies",
    "welch",
]
