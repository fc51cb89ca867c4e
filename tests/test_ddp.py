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
        accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ShardRecorder(str(tmp_path))], default_root_dir=tmp_path,
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
