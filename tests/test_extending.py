"""The user's own network, optimiser and data by class path; the old flat form still works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashion_cnn import FashionCNN, legacy
from fashion_cnn.components import check_datamodule, diagnose
from fashion_cnn.errors import ConfigError
from fashion_cnn.legacy import to_flat, to_parts
from fashion_cnn.network import FashionCNNNet, count_parameters

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "extending"
sys.path.insert(0, str(GUIDE))
import my_nets  # noqa: E402  (the guide's own file)


def test_the_skip_option_keeps_the_journal_counts_when_off() -> None:
    assert count_parameters(FashionCNNNet(layers=4, filters=32)) == 832_298
    assert count_parameters(FashionCNNNet(layers=6, filters=64, norm="instance", dropout=0.1)) == 588_106
    skip = FashionCNNNet(layers=8, filters=32, skip=True)
    # Only the first block changes width (1 -> 32): one 1x1 projection, 32 + 32 parameters.
    assert count_parameters(skip) == count_parameters(FashionCNNNet(layers=8, filters=32)) + 64
    assert skip(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_users_network_and_optimiser_by_spec() -> None:
    model = FashionCNN(
        net={"class_path": "my_nets.TinyResNet", "init_args": {"width": 4}},
        optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
        scheduler=None,
    )
    assert isinstance(model.net, my_nets.TinyResNet)
    assert model.hparams["net"] == {"class_path": "my_nets.TinyResNet", "init_args": {"width": 4}}
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)
    assert to_flat(model.hparams) is None  # not the journal's model: hashed as written


def test_a_network_of_the_wrong_output_width_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"returned \(2, 3\).*expected .*\(2, 10\)"):
        FashionCNN(net=my_nets.WrongWidth())


def test_old_flat_hyperparameters_build_the_same_model() -> None:
    old = {"layers": 6, "filters": 64, "norm": "instance", "dropout": 0.1, "optimizer": "adamw", "lr": 3e-3}
    old |= {"lr_scheduler": "onecycle", "weight_decay": 0.05, "num_classes": 10}
    model = FashionCNN(**to_parts(old))
    assert model.num_params == 588_106
    flat = to_flat(model.hparams)
    assert flat is not None and flat["optimizer"] == "adamw" and flat["lr_scheduler"] == "onecycle"
    assert {k: flat[k] for k in ("layers", "filters", "lr", "weight_decay")} == {
        "layers": 6,
        "filters": 64,
        "lr": 3e-3,
        "weight_decay": 0.05,
    }


def test_bad_class_paths_are_named() -> None:
    message = diagnose(["fit", "--model.net", "no_such_module.Net"])
    assert message is not None and "module 'no_such_module' does not import (ModuleNotFoundError" in message
    message = diagnose(["fit", "--model.net=torch.optim.Adam"])
    assert message is not None and "is not a torch.nn.Module" in message
    assert diagnose(["fit", "--model.optimizer", "torch.optim.AdamW"]) is None


OLD_FLAT_CONFIG = """
model:
  layers: 4
  filters: 32
  norm: batch
  dropout: 0.2
  optimizer: sgd
  lr: 0.05
  momentum: 0.9
trainer:
  max_epochs: 1
"""


def test_an_old_flat_config_file_is_named_with_its_new_form(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "old.yaml"
    path.write_text(OLD_FLAT_CONFIG)
    message = legacy.diagnose(["fit", "--config", str(path)], [str(path)])
    assert message is not None and message.startswith(f"{path}: its model: section uses the old flat keys")
    assert "(optimizer, layers, filters, norm, dropout, lr, momentum)" in message
    # The form the message gives, pasted into a config, builds the model the old one described.
    new = yaml.safe_load(message.split("Replace the section with: ", 1)[1])["model"]
    assert set(new) == {"net", "optimizer"}  # no scheduler key: the file left it at the default
    old = yaml.safe_load(OLD_FLAT_CONFIG)["model"]
    built, expected = FashionCNN(**new), FashionCNN(**to_parts(old))
    assert built.num_params == expected.num_params and built.hparams["net"] == expected.hparams["net"]
    assert isinstance(built.configure_optimizers()["optimizer"], torch.optim.SGD)
    # A config in the new form, or none, is not the old one.
    assert legacy.diagnose(["fit"], [str(Path(__file__).parents[1] / "configs" / "baseline.yaml")]) is None


def test_old_flat_optimiser_options_name_their_replacement() -> None:
    assert legacy.diagnose(["fit", "--model.optimizer", "sgd"], []) == (
        "--model.optimizer=sgd is the old short name; give the class path: --model.optimizer=torch.optim.SGD"
    )
    message = legacy.diagnose(["fit", "--model.lr_scheduler=cosine"], [])
    assert message is not None and "--model.scheduler=torch.optim.lr_scheduler.CosineAnnealingLR" in message
    assert legacy.diagnose(["fit", "--model.optimizer=torch.optim.SGD", "--model.dropout=0.1"], []) is None


def test_a_datamodule_missing_a_protocol_attribute_is_named() -> None:
    class Half:
        num_classes = 10
        input_shape = (1, 28, 28)

    with pytest.raises(ConfigError, match="has no 'input_mean'"):
        check_datamodule(Half())


HALF_DATA = """
import lightning as L


class HalfData(L.LightningDataModule):
    num_classes = 10
    input_shape = (1, 28, 28)
"""


@pytest.mark.integration
def test_the_guides_network_trains_through_the_cli_and_bad_input_is_one_line(tmp_path: Path) -> None:
    env = {"PYTHONPATH": f"{GUIDE}:{tmp_path}:{Path(__file__).resolve().parents[1]}", "PATH": "/usr/bin:/bin"}
    env |= {"HOME": str(tmp_path)}
    tracking = ["--trainer.logger.init_args.tracking_uri", f"sqlite:///{tmp_path}/mlflow.db"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fashion_cnn.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("fit", "--config", "debug", *tracking, "--output_dir", str(tmp_path / "runs"), *args)

    def errors(done: subprocess.CompletedProcess[str]) -> list[str]:
        return [line for line in done.stderr.splitlines() if line.startswith("fashion-cnn: error:")]

    bad = run("--model.net", "my_nets.WrongWidth")
    assert bad.returncode == 2, bad.stderr
    lines = errors(bad)
    assert len(lines) == 1 and "model.net my_nets.WrongWidth returned (2, 3)" in lines[0], bad.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    missing = run("--model.net", "nope_nets.Net")
    assert missing.returncode == 2 and "module 'nope_nets' does not import" in missing.stderr
    (tmp_path / "half_data.py").write_text(HALF_DATA)
    half = run("--data", "half_data.HalfData")
    assert half.returncode == 2 and errors(half) == [
        "fashion-cnn: error: data half_data.HalfData has no 'input_mean': a DataModule gives num_classes, "
        "input_shape, input_mean, input_std, class_names (fashion_cnn.data.DataProtocol; docs/extending.md)"
    ], half.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    (tmp_path / "old.yaml").write_text(OLD_FLAT_CONFIG)
    flat = run("--config", str(tmp_path / "old.yaml"))
    lines = errors(flat)
    assert flat.returncode == 2 and len(lines) == 1 and "Replace the section with: model: {net:" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    good = run(
        "--model.net", "my_nets.TinyResNet", "--model.net.width", "4", "--model.optimizer", "torch.optim.SGD"
    )
    assert good.returncode == 0, good.stderr[-2000:]
    old = str(FIXTURES / "old_flat.ckpt")  # a checkpoint of before issue 20 tests and predicts
    from_old = ["--config", "debug", "--ckpt_path", old, *tracking]
    tested = cli(
        "test", *from_old, "--output_dir", str(tmp_path / "old"), "--trainer.limit_test_batches", "1"
    )
    assert tested.returncode == 0 and "test/acc" in tested.stdout, tested.stderr[-2000:]
    predictions = str(tmp_path / "p.csv")
    predicted = cli(
        "predict", *from_old, "--predictions_file", predictions, "--trainer.limit_predict_batches", "1"
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert (tmp_path / "p.csv").read_text().startswith("item,predicted,confidence")
    ckpt = next((tmp_path / "runs").rglob("best-*.ckpt"))
    load = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from fashion_cnn.checkpoints import load_model; m, _ = load_model({str(ckpt)!r}); "
            "print(type(m.net).__name__, m.hparams['optimizer']['class_path'])",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert load.stdout.split() == ["TinyResNet", "torch.optim.SGD"], load.stderr[-2000:]


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_a_checkpoint_of_the_old_flat_form_loads_and_predicts_the_same() -> None:
    """tests/fixtures/old_flat.ckpt was written by the code before issue 20 (layers=1, filters=2,
    BatchNorm, AdamW + one-cycle, label smoothing 0.1), with the logits it gave for two images."""
    from fashion_cnn.checkpoints import load_model
    from fashion_cnn.export import load_network

    model, checkpoint = load_model(FIXTURES / "old_flat.ckpt")
    assert checkpoint["hyper_parameters"]["layers"] == 1  # the old form, as written
    expected = torch.load(FIXTURES / "old_flat_logits.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(model(expected["x"]), expected["logits"])
    assert model.num_params == 1646 and model.hparams.label_smoothing == 0.1
    flat = to_flat(model.hparams)
    assert flat is not None
    assert (flat["optimizer"], flat["lr"], flat["weight_decay"], flat["lr_scheduler"]) == (
        "adamw",
        0.003,
        0.05,
        "onecycle",
    )
    classifier, metadata = load_network(FIXTURES / "old_flat.ckpt")
    with torch.no_grad():
        logits, _ = classifier(expected["x"])
    assert torch.allclose(logits, expected["logits"]) and metadata["normalize"] == "true"


@pytest.mark.integration
@pytest.mark.slow
def test_the_guides_study_compares_the_users_network_with_the_journals(tmp_path: Path) -> None:
    """docs/extending/my_study.yaml through the real CLI, at a tiny budget: a verdict is reported."""
    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{GUIDE}:{root}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    budget = ["--seeds", "2", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"]
    budget += ["--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "fashion_cnn.cli", "study", str(GUIDE / "my_study.yaml"), *budget],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "studies" / "my_study" / "report.md").read_text()
    assert "tiny_resnet beats journal on test/loss" in report and "(2,682 params)" not in report
    assert "2,682" in report and "832,298" in report
