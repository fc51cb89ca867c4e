"""Hypothesis studies: a journal claim re-run over variants x seeds, with verdicts from real statistics.

``fashion-cnn study configs/studies/dropout.yaml`` (or :func:`run_studies`) reads a study file
(:mod:`~fashion_cnn.study.spec`), resolves and hashes every variant (:mod:`~fashion_cnn.study.plan`),
trains what is missing as MLflow child runs of one parent (:mod:`~fashion_cnn.study.runner`, on an
executor from :mod:`~fashion_cnn.study.executors`: serial or Ray), and writes a report that marks
every expected outcome (:mod:`~fashion_cnn.study.claims`) supported, not supported or inconclusive
by a stated test (:mod:`~fashion_cnn.study.verdicts`, :mod:`~fashion_cnn.study.report`).
"""

from __future__ import annotations

from fashion_cnn.errors import StudyError
from fashion_cnn.study.claims import CLAIM_FORMS, Claim, Metric, parse_claim
from fashion_cnn.study.executors import SerialExecutor, make_executor
from fashion_cnn.study.plan import StudyPlan, VariantPlan, override_args, plan_study, run_overrides
from fashion_cnn.study.progress import ConsoleProgress, Progress
from fashion_cnn.study.runner import run_studies
from fashion_cnn.study.spec import Study, Variant, load_study, parse_seeds
from fashion_cnn.study.trial import Trial, TrialFailed, TrialResult, run_trial
from fashion_cnn.study.verdicts import ALPHA, Evaluation, evaluate_claim, mean_ci, welch

__all__ = [
    "ALPHA",
    "CLAIM_FORMS",
    "Claim",
    "ConsoleProgress",
    "Evaluation",
    "Metric",
    "Progress",
    "SerialExecutor",
    "Study",
    "StudyError",
    "StudyPlan",
    "Trial",
    "TrialFailed",
    "TrialResult",
    "Variant",
    "VariantPlan",
    "evaluate_claim",
    "load_study",
    "make_executor",
    "mean_ci",
    "override_args",
    "parse_claim",
    "parse_seeds",
    "plan_study",
    "run_overrides",
    "run_studies",
    "run_trial",
    "welch",
]
