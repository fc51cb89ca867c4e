"""ONNX export of a trained checkpoint, with the pixel normalisation inside the graph.

``fashion-cnn export --ckpt_path runs/.../best-epoch02.ckpt --output_file model.onnx`` writes a model
that needs neither PyTorch nor this package (see ``docs/deploy.md``):

- input ``pixels``: uint8 (B, 1, 28, 28), raw grey levels 0-255 as stored in Fashion-MNIST (light
  garment on a dark background); the batch size B is dynamic;
- outputs ``logits`` (B, 10) float32 and ``probs`` (B, 10) float32, the softmax of the logits;
- metadata (``custom_metadata_map`` in onnxruntime): ``class_names`` (JSON list), the
  normalisation used, the source checkpoint and its MLflow run id.

The input is uint8 rather than float so that a deployment cannot feed [0, 1] floats to a model
that expects [0, 255], or the reverse: the only conversion a caller makes is the one PIL and
numpy make anyway. The export uses PyTorch's ``torch.export``-based exporter (the default since
PyTorch 2.9; the TorchScript one is deprecated), which needs ``onnxscript``; the file is checked
with onnxruntime against PyTorch before it replaces anything at the output path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fashion_cnn._io import atomic_write
from fashion_cnn.checkpoints import load_model
from fashion_cnn.data import CLASS_NAMES, prepare_batch
from fashion_cnn.errors import MissingDependencyError, UserError

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "PixelClassifier",
    "export_onnx",
    "load_network",
]

log = logging.getLogger(__name__)

# PyTorch's exporter implements opset 18 and converts to any other opset afterwards (with a
# warning, and only where the onnx version converter can); onnxruntime has run opset 18 since
# 1.14 (2023). So 18 is the default, and --opset 17 still works for older runtimes.
DEFAULT_OPSET = 18
MIN_OPSET = 16  # the lowest the conversion reaches for every norm (measured: 15 keeps opset 18)
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probs")
VERIFY_ATOL = 1e-4  # ONNX vs PyTorch logits; float32 reorderings differ by ~1e-6 here
INSTALL_HINT = 'pip install "fashion-cnn[onnx]"'


class PixelClassifier(nn.Module):
    """A trained network behind the model's own uint8 -> float conversion (:func:`prepare_batch`).

    Args:
        net: The trained network, taking prepared float images (B, 1, 28, 28).
        mean: Pixel mean on the [0, 1] scale that training subtracted (0 for unnormalised input).
        std: Pixel standard deviation on the [0, 1] scale that training divided by (1 likewise).
    """

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.mean, self.std = mean, std

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and probabilities (B, num_classes) for uint8 pixels (B, 1, 28, 28)."""
        logits = self.net(prepare_batch(pixels, self.mean, self.std))
        return logits, torch.softmax(logits, dim=1)


def load_network(checkpoint_path: str | os.PathLike[str]) -> tuple[PixelClassifier, dict[str, Any]]:
    """The checkpoint's network wrapped in :class:`PixelClassifier` (eval mode, CPU), and metadata.

    Raises:
        CheckpointError: The file is missing, not a checkpoint, or of another model.
    """
    model, checkpoint = load_model(checkpoint_path)
    hp = model.hparams
    net = model.net.to(memory_format=torch.contiguous_format).eval()
    mean, std = float(hp.input_mean), float(hp.input_std)
    metadata = {
        "class_names": json.dumps(list(CLASS_NAMES[: hp.get("num_classes", len(CLASS_NAMES))])),
        "input": f"{INPUT_NAME}: uint8 (batch, 1, 28, 28), grey levels 0-255, light garment on dark",
        "outputs": "logits (batch, classes) float32; probs (batch, classes) float32, softmax of logits",
        "normalize": str((mean, std) != (0.0, 1.0)).lower(),
        "mean": repr(mean),
        "std": repr(std),
        "source_checkpoint": Path(checkpoint_path).name,
        "mlflow_run_id": str(checkpoint.get("mlflow_run_id") or ""),
    }
    return PixelClassifier(net, mean, std).eval(), metadata


def export_onnx(
    checkpoint_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a checkpoint to ONNX (uint8 pixels in, logits and probabilities out).

    The file is written atomically, after onnxruntime has reproduced PyTorch's logits on a
    random batch to within 1e-4.

    Args:
        checkpoint_path: A ``.ckpt`` written by ``fashion-cnn fit``.
        output_path: The ``.onnx`` file to write (its folder is created if needed).
        opset: ONNX opset of the file, from 16 to what the installed onnx supports.

    Returns:
        The path of the written file.

    Raises:
        UserError: Unusable checkpoint or output path (CheckpointError for the checkpoint).
        MissingDependencyError: onnx, onnxscript or onnxruntime is not installed.
        ValueError: An opset outside the supported range.
    """
    onnx, ort = _import_onnx()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= _max_opset(onnx):
        raise ValueError(
            f"opset={opset!r} is not supported; use an integer from {MIN_OPSET} to "
            f"{_max_opset(onnx)}, e.g. {DEFAULT_OPSET}"
        )
    output = Path(output_path).expanduser()
    if output.is_dir():
        raise UserError(
            f"--output_file {output} is a folder; pass a file path such as {output / 'model.onnx'}"
        )
    model, metadata = load_network(checkpoint_path)

    example = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)  # (B, 1, 28, 28), B > 1 stays symbolic
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            external_data=False,  # one self-contained file; the weights are a few MB
            verbose=False,
        )
    if program is None:  # dynamo=True always returns a program; this only tells the type checker
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    actual = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if actual != opset:
        raise ValueError(
            f"the exporter could not convert the model to opset {opset} (it stayed at {actual}); "
            f"use --opset {DEFAULT_OPSET}"
        )
    proto.doc_string = "Fashion-MNIST classifier exported by fashion-cnn; see docs/deploy.md"
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    diff = _max_logit_difference(ort, data, model)
    if not diff <= VERIFY_ATOL:
        raise RuntimeError(
            f"the ONNX model differs from PyTorch by {diff:.2e} (> {VERIFY_ATOL}); not written"
        )

    try:
        with atomic_write(output) as fh:
            fh.write(data)
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
    log.info(
        "exported %s (opset %d, %.1f MB, max |logit diff| vs PyTorch %.1e)",
        output,
        opset,
        len(data) / 1e6,
        diff,
    )
    return output


def _import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter imports it; fail here, by name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({exc.name} is missing): {INSTALL_HINT}"
        ) from None
    return onnx, onnxruntime


def _max_opset(onnx: Any) -> int:
    return int(onnx.defs.onnx_opset_version())


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's INFO chatter (one line per optimisation pass) for the duration."""
    names = ("onnxscript", "onnx_ir", "torch.onnx")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _max_logit_difference(ort: Any, model_bytes: bytes, model: PixelClassifier) -> float:
    """Largest |logit| difference between onnxruntime and PyTorch on a seeded random batch."""
    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types, e.g. for a too-new opset
        raise ValueError(
            f"onnxruntime {ort.__version__} cannot load the exported model ({str(exc).splitlines()[0]}); "
            f"export with a lower --opset, e.g. {DEFAULT_OPSET}, or upgrade onnxruntime"
        ) from None
    pixels = torch.randint(
        0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    logits_onnx = torch.from_numpy(session.run([OUTPUT_NAMES[0]], {INPUT_NAME: pixels.numpy()})[0])
    with torch.no_grad():
        logits_torch = model(pixels)[0]
    return float((logits_onnx - logits_torch).abs().max())
