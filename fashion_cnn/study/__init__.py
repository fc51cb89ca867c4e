"""Hypothesis studies: a journal claim re-run over variants x seeds, with verdicts from real statistics.

A study file (:mod:`~fashion_cnn.study.spec`) is planned and hashed (:mod:`~fashion_cnn.study.plan`),
its missing runs trained on the run layer (:func:`run_studies`), and every expected outcome judged by
a stated test (:mod:`~fashion_cnn.study.claims`, :mod:`~fashion_cnn.study.verdicts`).
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
