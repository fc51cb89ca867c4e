"""ONNX export: onnxruntime reproduces PyTorch on raw pixels, and the command fails in one clear line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from _cli_args import QUIET_TRAINER

from fashion_cnn import FashionCNN, FashionMNISTDataModule
from fashion_cnn.cli import main
from fashion_cnn.data import CLASS_NAMES, prepare_batch
from fashion_cnn.export import DEFAULT_OPSET, export_onnx

ATOL = 1e-4


@pytest.fixture(scope="module")
def ort():
    """onnxruntime, skipping the test where the [onnx] extra is not installed."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def _checkpoint(path: Path, norm: str = "batch", normalize: bool | None = None, **arch) -> Path:
    """A checkpoint as fit writes it, with non-trivial BatchNorm statistics (no training needed)."""
    L.seed_everything(0)
    stats = {"input_mean": 0.0, "input_std": 1.0} if normalize is False else {}  # as fit links them
    model = FashionCNN(
        norm=norm, **({"layers": 2, "filters": 8, "hidden": 16, "pool_every": 1} | stats | arch)
    )
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    if normalize is not None:  # what fit stores when the datamodule was configured
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["datamodule_hyper_parameters"] = {"normalize": normalize}
        torch.save(checkpoint, path)
    return path


def _torch_logits(ckpt: Path, images: torch.Tensor, normalize: bool = True) -> np.ndarray:
    """The reference: the Lightning model on the data pipeline's own preprocessing."""
    model = FashionCNN.load_from_checkpoint(ckpt, map_location="cpu").eval()
    with torch.no_grad():
        return model(prepare_batch(images, normalize=normalize)).numpy()


@pytest.mark.parametrize(("norm", "normalize"), [("batch", None), ("group", False)])
def test_onnx_matches_pytorch_on_raw_pixels(ort, synthetic_idx_dir, tmp_path: Path, norm, normalize) -> None:
    ckpt = _checkpoint(tmp_path / "model.ckpt", norm=norm, normalize=normalize)
    path = export_onnx(ckpt, tmp_path / "out" / "model.onnx")
    assert path == tmp_path / "out" / "model.onnx" and list(path.parent.iterdir()) == [path]  # no temp left

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (pixels,) = session.get_inputs()
    assert pixels.name == "pixels" and pixels.type == "tensor(uint8)" and pixels.shape[1:] == [1, 28, 28]
    assert [o.name for o in session.get_outputs()] == ["logits", "probs"]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == list(CLASS_NAMES)
    assert meta["normalize"] == ("false" if normalize is False else "true")

    images = torch.from_numpy(synthetic_idx_dir.arrays["test_images"]).unsqueeze(1)  # (50, 1, 28, 28) uint8
    expected = _torch_logits(ckpt, images, normalize=normalize is not False)
    for batch in (images[:1], images):  # the batch axis is dynamic
        logits, probs = session.run(None, {"pixels": batch.numpy()})
        assert np.abs(logits - expected[: len(batch)]).max() < ATOL
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert (probs.argmax(1) == expected[: len(batch)].argmax(1)).all()


def test_checkpoints_from_before_uint8_input_keep_their_normalisation(ort, tmp_path: Path) -> None:
    """Older checkpoints recorded normalize only with the datamodule; the export still honours it."""
    ckpt = _checkpoint(tmp_path / "old.ckpt", normalize=False)
    checkpoint = torch.load(ckpt, weights_only=True)
    for key in ("input_mean", "input_std"):
        del checkpoint["hyper_parameters"][key]
    torch.save(checkpoint, ckpt)
    path = export_onnx(ckpt, tmp_path / "old.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["normalize"] == "false"
    images = torch.randint(
        0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    (logits, _) = session.run(None, {"pixels": images.numpy()})
    assert np.abs(logits - _torch_logits(ckpt, images, normalize=False)).max() < ATOL


def test_export_command(ort, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _checkpoint(tmp_path / "model.ckpt", norm="instance")
    out = tmp_path / "model.onnx"
    assert main(["export", "--ckpt_path", str(ckpt), "--output_file", str(out), "--opset", "17"]) == 0
    assert f"exported {out}" in capsys.readouterr().err
    import onnx

    assert {o.domain: o.version for o in onnx.load(str(out)).opset_import}[""] == 17
    assert DEFAULT_OPSET == 18


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing", ["does not exist"]),
        ("text", ["not a readable checkpoint"]),
        ("other_model", ["another model"]),
        ("no_args", ["--ckpt_path"]),
        ("opset", ["opset=9", "e.g. 18"]),
        ("output_dir", ["is a folder"]),
    ],
)
def test_export_errors_are_one_clear_line(
    ort, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, fragments: list[str]
) -> None:
    ckpt = tmp_path / "bad.ckpt"
    out = tmp_path / "model.onnx"
    args = ["--ckpt_path", str(ckpt), "--output_file", str(out)]
    if case == "text":
        ckpt.write_text("not a checkpoint")
    elif case == "other_model":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"hidden_dim": 3}}, ckpt)
    elif case == "no_args":
        args = []
    elif case in ("opset", "output_dir"):
        _checkpoint(ckpt)
        args += ["--opset", "9"] if case == "opset" else ["--output_file", str(tmp_path)]
    code = main(["export", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fashion-cnn: error:") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    assert not out.exists()


def test_missing_onnx_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    code = main(["export", "--ckpt_path", str(tmp_path / "any.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "fashion-cnn[onnx]"' in err and "onnxruntime" in err


def test_failed_export_keeps_the_previous_file(ort, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    assert main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--output_file", str(out)]) == 2
    assert out.read_bytes() == b"previous"


@pytest.mark.realdata
@pytest.mark.integration
def test_onnx_matches_pytorch_on_the_real_test_set(ort, real_data_dir: Path, tmp_path: Path) -> None:
    """All 10,000 real test images through a briefly trained model, in PyTorch and onnxruntime."""
    L.seed_everything(0)
    model = FashionCNN(layers=2, filters=8, hidden=64, norm="batch", dropout=0.1, pool_every=1)
    datamodule = FashionMNISTDataModule(data_dir=str(real_data_dir), download=False, val_size=0)
    trainer = L.Trainer(
        **QUIET_TRAINER,
        max_steps=30,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    session = ort.InferenceSession(str(export_onnx(ckpt, tmp_path / "model.onnx")))

    datamodule.setup("test")
    images, labels = datamodule.test_set.images, datamodule.test_set.targets  # (10000, 1, 28, 28) uint8
    expected = _torch_logits(ckpt, images)
    logits, probs = session.run(None, {"pixels": images.numpy()})
    assert len(logits) == 10_000
    assert np.abs(logits - expected).max() < ATOL
    assert (probs.argmax(1) == labels.numpy()).mean() > 0.5  # trained: well above chance (0.1)
