"""Lightning's DDP with our data path: two CPU processes (gloo), each on its own half of the data.

ddp_fork, not ddp_spawn: forked workers inherit the synthetic-data fixture's patched checksums,
while spawned ones would re-import the module and verify against the real ones.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from _cli_args import QUIET_TRAINER, run_console_script
from mlflow.tracking import MlflowClient

from fashion_cnn import FashionCNN, FashionMNISTDataModule


class ShardRecorder(L.Callback):
    """Writes the indices of the training labels each rank saw per epoch (rank-local files)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        path = Path(self.folder) / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.txt"
        with path.open("a") as fh:
            # A fingerprint per image (the synthetic images are random, so these are unique).
            ids = batch[0].flatten(1).double() @ torch.arange(1, 785, dtype=torch.float64)
            fh.write(" ".join(f"{v:.3f}" for v in ids.tolist()) + "\n")


@pytest.mark.slow
def test_ddp_two_processes_share_the_epoch(tmp_path: Path, synthetic_idx_dir) -> None:
    shutil.copytree(synthetic_idx_dir.source_dir, os.environ["FASHION_CNN_DATA_DIR"])
    dm = FashionMNISTDataModule(batch_size=8, val_size=40)
    model = FashionCNN(layers=2, filters=4, hidden=16, norm="batch")
    trainer = L.Trainer(
        **QUIET_TRAINER,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        max_epochs=2,
        callbacks=[ShardRecorder(str(tmp_path))],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    orders = {}
    for epoch in (0, 1):
        seen = [(tmp_path / f"rank{r}-epoch{epoch}.txt").read_text().split() for r in (0, 1)]
        assert [len(s) for s in seen] == [80, 80]  # 160 training images, half each
        assert not set(seen[0]) & set(seen[1])  # no image seen twice in an epoch
        assert len(set(seen[0]) | set(seen[1])) == 160
        orders[epoch] = seen[0]
    assert orders[0] != orders[1]  # a new shuffle each epoch
    assert "val/acc" in trainer.callback_metrics
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.integration
def test_ddp_through_the_console_script(tmp_path: Path) -> None:
    """The documented launch, `fit ... --trainer.devices 2 --trainer.strategy ddp`, end to end.

    Lightning re-runs the command line for rank 1, so this needs the real console script and the
    real data (the synthetic fixture's patched checksums live in this process only).
    """
    config = "configs/debug.yaml"  # found by name (packaged), from the empty folder the run starts in
    args = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    done = run_console_script(tmp_path, "fit", "--config", str(config), *args, data_dir=tmp_path / "data")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fashion-cnn").experiment_id])  # rank 0 only
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.devices"] == "2"
    # Both ranks agreed on one checkpoint folder, the one named after rank 0's run id.
    (folder,) = (tmp_path / "runs").glob("debug-seed0/*/checkpoints")
    assert folder.parent.name == run.info.run_id
    assert (folder / "last.ckpt").is_file()
    assert not list(folder.glob("*.partial"))
    # 10 steps of 2 x 64 images on a 2-layer net beat chance (10 %) clearly on real data.
    assert run.data.metrics["test/acc"] > 0.2
