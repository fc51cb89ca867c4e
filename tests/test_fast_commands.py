"""The fast tier's short commands: predict, a study and a sweep, each once, at the smallest budget.

The end-to-end tests of these commands (restart, resume, interruption, pruning, reuse) are
``integration`` tests; these keep the logic of predictions.py, the study report and the sweep
runner, objective and report in the fast tier (``pytest -m "not slow and not integration"``).
Everything goes through ``fashion_cnn.cli.main`` in this process on the synthetic data, so they
hold whatever the modules behind the commands are called.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from fashion_cnn import FashionCNN
from fashion_cnn.cli import main
from fashion_cnn.data import CLASS_NAMES, prepare_batch

# One batch of each split: enough for every code path, seconds per run.
ONE_BATCH = [
    "--model.layers=2",
    "--model.hidden=8",
    "--model.pool_every=1",
    "--data.val_size=40",
    "--data.batch_size=32",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=1",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
]


def _checkpoint(path: Path) -> tuple[Path, FashionCNN]:
    """A checkpoint as fit writes it, without training (the weights are the seeded initial ones)."""
    L.seed_everything(0)
    model = FashionCNN(layers=2, filters=4, hidden=16, pool_every=1)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path, model.eval()


@pytest.mark.timeout(120)
def test_predict_writes_the_models_own_probabilities(workdir: Path, synthetic_idx_dir) -> None:
    ckpt, model = _checkpoint(workdir / "model.ckpt")
    out = workdir / "pred.csv"
    args = ["--ckpt_path", str(ckpt), "--data.val_size=40", "--predictions_file", str(out)]
    # fp32: the default bf16 autocast (where the CPU has it) would move the probabilities by ~1e-4.
    args += ["--trainer.precision=32-true", "--trainer.enable_progress_bar=false"]
    assert main(["predict", *args]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["item"] for r in rows] == [f"test/{i}" for i in range(50)]  # the synthetic test set, in order
    images = torch.from_numpy(synthetic_idx_dir.arrays["test_images"]).unsqueeze(1)
    with torch.no_grad():
        probs = torch.softmax(model(prepare_batch(images)), dim=1)
    written = torch.tensor([[float(r[f"p_{name}"]) for name in CLASS_NAMES] for r in rows])
    torch.testing.assert_close(written, probs, rtol=0, atol=1e-6)  # written with 6 decimals
    assert [r["predicted"] for r in rows] == [CLASS_NAMES[i] for i in probs.argmax(1).tolist()]
    assert [float(r["confidence"]) for r in rows] == pytest.approx(probs.max(1).values.tolist(), abs=1e-6)


STUDY = """
# A study at the smallest budget, for the fast tier.
title: Fast study
hypothesis: Four filters beat two.
seeds: 1
variants:
  - {name: two, overrides: {model.filters: 2}}
  - {name: four, overrides: {model.filters: 4}}
expected:
  - {claim: four beats two on test/acc, journal: "more filters help"}
  - {claim: four is between -10 and 10 on test/loss, journal: "planted true"}
"""


@pytest.mark.timeout(180)
def test_a_study_trains_its_runs_and_writes_its_reports(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    path = workdir / "fast.yaml"
    path.write_text(STUDY)
    combined = workdir / "docs" / "fast.md"
    assert main(["study", str(path), *ONE_BATCH, "--combined_report", str(combined)]) == 0
    err = capsys.readouterr().err
    assert "2 done, 0 running, 0 failed, 0 left" in err
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashion-cnn-studies")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("study_role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(trials) == 2
    assert {r.data.tags["variant"]: r.data.params["net/init_args/filters"] for r in trials} == {
        "two": "2",
        "four": "4",
    }
    report = (workdir / "studies" / "fast" / "report.md").read_text()
    assert report.startswith("# Fast study") and "> Four filters beat two." in report
    assert "| two |" in report and "| four |" in report and "(n = 1)" in report
    assert "four and two differ in: model.filters (4 vs 2)." in report
    # One seed each: no claim can be tested, and the report says so rather than deciding.
    assert "**inconclusive** (four beats two on test/acc)" in report
    assert "**inconclusive** (four is between -10 and 10 on test/loss)" in report
    doc = combined.read_text()
    assert "## Fast study" in doc and "2 runs: 2 trained" in doc and "fashion-cnn study " in doc


SWEEP = """
# A sweep at the smallest budget, for the fast tier.
name: fast
n_trials: 2
startup_trials: 1
pruner: none
run_cpus: 1
space:
  model.filters: {type: categorical, choices: [2, 4]}
model: {layers: 2, hidden: 8, pool_every: 1}
data: {val_size: 40, batch_size: 32}
trainer: {max_epochs: 1, limit_train_batches: 1, limit_val_batches: 1, limit_test_batches: 1}
"""


@pytest.mark.timeout(180)
def test_a_sweep_runs_its_trials_tests_the_best_and_reports(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = workdir / "sweep.yaml"
    path.write_text(SWEEP)
    assert main(["sweep", "--config", str(path)]) == 0
    assert "2 complete, 0 pruned, 0 failed" in capsys.readouterr().err
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashion-cnn-sweeps")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    roles = sorted(r.data.tags.get("sweep_role", "") for r in runs)
    assert roles == ["parent", "test", "trial", "trial"]  # two trials, the best one tested once
    (parent,) = [r for r in runs if r.data.tags["sweep_role"] == "parent"]
    trials = [r for r in runs if r.data.tags["sweep_role"] == "trial"]
    (tested,) = [r for r in runs if r.data.tags["sweep_role"] == "test"]
    values = {r.data.tags["optuna_trial"]: r.data.metrics["val/acc"] for r in trials}
    assert sorted(values) == ["0", "1"]
    assert values[tested.data.tags["optuna_trial"]] == max(values.values())  # the best (or a tie) is tested
    assert parent.data.metrics["best/val/acc"] == pytest.approx(max(values.values()))
    assert parent.data.metrics["best/test/acc"] == tested.data.metrics["test/acc"]
    out = workdir / "sweeps" / "fast"
    assert "2 trials: **2 complete, 0 pruned, 0 failed**" in (out / "report.md").read_text()
    assert (out / "best_config.yaml").is_file()
