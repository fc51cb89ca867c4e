"""Helpers shared by the tests that train: CLI arguments, the console-script runner, a quiet Trainer."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Small and fast on the synthetic data (200 train / 50 test images).
TINY = [
    "--model.layers=2",
    "--model.filters=4",
    "--model.hidden=16",
    "--data.val_size=40",
    "--data.batch_size=32",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def run_console_script(cwd, *args: str, data_dir) -> subprocess.CompletedProcess:
    """Run the installed ``fashion-cnn`` command on the real data, as a user would.

    Skips the calling test when Debian's dataset-fashion-mnist or the console script is missing.
    The default sqlite store in ``cwd`` is used (a caller's ``MLFLOW_TRACKING_URI`` is dropped).
    """
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    exe = shutil.which("fashion-cnn")
    if exe is None:
        pytest.skip("the fashion-cnn console script is not installed (pip install -e .)")
    env = {**os.environ, "FASHION_CNN_DATA_DIR": str(data_dir)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


# Trainer arguments for tests that only need the loops: no logger, checkpoints, bar or summary.
QUIET_TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
