"""fashion_cnn: configurable CNN experiments on Fashion-MNIST with PyTorch Lightning and MLflow.

``FashionCNNNet`` and ``ConvBlock`` are plain ``nn.Module``s; importing them does not import
Lightning. Every name loads on first use, so ``import fashion_cnn`` (and the ``fashion-cnn --help``
that needs it) imports neither torch nor Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# The one source of the version: pyproject.toml reads the same attribute (setuptools ``attr``), so
# ``fashion-cnn --version``, ``fashion_cnn.__version__`` and the wheel's metadata agree, also in a
# source tree that was never installed.
from fashion_cnn.__about__ import __version__

# name -> module that defines it; resolved lazily so the plain network needs no Lightning import.
_LAZY = {
    "ConvBlock": "fashion_cnn.network",
    "FashionCNNNet": "fashion_cnn.network",
    "count_parameters": "fashion_cnn.network",
    "FashionCNN": "fashion_cnn.system",
    "FashionMNISTDataModule": "fashion_cnn.data",
    "ImageFolderDataModule": "fashion_cnn.image_folder",
    "DataError": "fashion_cnn.data",
    "CLASS_NAMES": "fashion_cnn.data",
    "run_experiment": "fashion_cnn.runs.launch",
}

if TYPE_CHECKING:
    from fashion_cnn.data import CLASS_NAMES, DataError, FashionMNISTDataModule
    from fashion_cnn.image_folder import ImageFolderDataModule
    from fashion_cnn.network import ConvBlock, FashionCNNNet, count_parameters
    from fashion_cnn.runs.launch import run_experiment
    from fashion_cnn.system import FashionCNN


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fashion_cnn' has no attribute {name!r}")


__all__ = [
    "CLASS_NAMES",
    "ConvBlock",
    "DataError",
    "FashionCNN",
    "FashionCNNNet",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "__version__",
    "count_parameters",
    "run_experiment",
]
