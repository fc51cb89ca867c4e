"""Shared fixtures. Data: tiny synthetic Fashion-MNIST lookalikes, so no test needs the real files."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from fashion_cnn import _idx
from fashion_cnn._idx import IMAGES_MAGIC, LABELS_MAGIC, IdxSpec

REAL_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
# pytest-timeout: pyproject.toml's `timeout` (600 s) covers slow and integration tests; a fast-tier
# test that has not finished in this many seconds is stuck (the slowest takes ~10 s on 2 busy cores).
FAST_TIMEOUT_S = 120
N_TRAIN, N_TEST = 200, 50  # 20 / 5 images per class


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each fast-tier test (neither slow nor integration) the tighter FAST_TIMEOUT_S, unless
    it sets its own ``@pytest.mark.timeout``."""
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("slow", "integration", "timeout")):
            item.add_marker(pytest.mark.timeout(FAST_TIMEOUT_S))


@pytest.fixture(autouse=True)
def _one_torch_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """One torch thread for each fast-tier test (slow and integration ones keep torch's default,
    as a user's run has it, and compare against the processes they start).

    The tests' networks are tiny, and a second intra-op thread mostly spins: tests/test_network.py,
    test_system.py and test_fast_commands.py took 26 s of CPU and 54 s wall with one thread, 42 s
    and 99 s with two, on the 2 shared cores. The runs of a study or sweep set their own
    (``--run_cpus``).
    """
    if any(request.node.get_closest_marker(m) for m in ("slow", "integration")):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """An IDX file: big-endian int32 magic and dimensions, then the uint8 data."""
    header = np.array((magic, *array.shape), dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@dataclass
class SyntheticIdx:
    """Four gzipped IDX files in ``source_dir`` whose checksums are in ``fashion_cnn._idx.SPECS``."""

    source_dir: Path
    specs: dict[str, IdxSpec]
    arrays: dict[str, np.ndarray]  # key -> decoded content
    raw: dict[str, bytes]  # key -> decompressed file bytes
    gz: dict[str, bytes]  # key -> .gz file bytes (also what a mirror serves)

    def path(self, key: str) -> Path:
        return self.source_dir / f"{self.specs[key].name}.gz"


def make_synthetic(directory: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> SyntheticIdx:
    """Write random, asymmetric images with balanced labels (all 10 classes) as .gz IDX files."""
    rng = np.random.default_rng(1234)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    specs, raw, gz = {}, {}, {}
    for key, real in _idx.SPECS.items():
        magic = IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC
        raw[key] = idx_bytes(magic, arrays[key])
        gz[key] = gzip.compress(raw[key], mtime=0)
        (directory / f"{real.name}.gz").write_bytes(gz[key])
        specs[key] = IdxSpec(
            name=real.name,
            magic=magic,
            shape=arrays[key].shape,
            sha256=hashlib.sha256(raw[key]).hexdigest(),
            gz_md5=hashlib.md5(gz[key]).hexdigest(),
        )
    return SyntheticIdx(directory, specs, arrays, raw, gz)


@pytest.fixture
def synthetic_idx_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SyntheticIdx:
    """Synthetic Fashion-MNIST (200 train / 50 test) in ``tmp_path/"source"``, made the expected data.

    Also isolates the data code from this machine: ``FASHION_CNN_DATA_DIR`` points at
    ``tmp_path/"data_dir"`` (created on use), Debian's folder at a path that does not exist, and
    the mirror list at a closed loopback port, so nothing outside ``tmp_path`` is read or written.
    """
    synthetic = make_synthetic(tmp_path / "source")
    monkeypatch.setattr(_idx, "SPECS", synthetic.specs)
    monkeypatch.setattr(_idx, "DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(_idx, "MIRRORS", ("http://127.0.0.1:9/",))  # discard port: refused
    monkeypatch.setenv("FASHION_CNN_DATA_DIR", str(tmp_path / "data_dir"))
    return synthetic


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def local_mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path/"mirror"``: yields (base URL, folder)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir filled once per session from Debian's real files (skips if they are absent)."""
    missing = [spec.name for spec in _idx.SPECS.values() if not (REAL_DATA_DIR / f"{spec.name}.gz").is_file()]
    if missing:
        pytest.skip(
            f"real Fashion-MNIST not installed ({', '.join(missing)} missing in {REAL_DATA_DIR}); "
            "apt-get install dataset-fashion-mnist"
        )
    data_dir = tmp_path_factory.mktemp("real_data_dir")
    _idx.load_verified(data_dir, [REAL_DATA_DIR], download=False)
    return data_dir


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_idx_dir: SyntheticIdx) -> Path:
    """A fresh working directory for real CLI runs: synthetic data already in the data dir (as if
    an earlier run had fetched it) and the default sqlite MLflow store created in the folder."""
    shutil.copytree(synthetic_idx_dir.source_dir, os.environ["FASHION_CNN_DATA_DIR"])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return work
