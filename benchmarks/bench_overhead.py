"""Framework overhead: one training epoch through Lightning with the defaults users get, against a
plain PyTorch loop over the same network, data tensors, batch size, optimizer and precision.

    python benchmarks/bench_overhead.py                  # full epochs (55,000 images), 3 rounds
    python benchmarks/bench_overhead.py --batches 200    # shorter

Lightning side: ``Trainer.fit`` with a progress bar, the MLflow logger on a sqlite store,
``RunCheckpoint`` (best + last), the default metrics (loss and torchmetrics accuracy logged per
epoch), validation switched off (the plain loop has none). Plain side: the same batches from the
same in-memory uint8 tensor, normalised the same way, a hand-written loop that also computes the
loss and accuracy per epoch. Both sides alternate over rounds; the median wall times and their
ratio are printed. Goal: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F

from fashion_cnn import FashionCNN, FashionMNISTDataModule
from fashion_cnn.checkpoints import RunCheckpoint
from fashion_cnn.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, prepare_batch
from fashion_cnn.lightning_cli import default_progress_bar
from fashion_cnn.seeding import EpochSeed
from fashion_cnn.speed import fast_precision
from fashion_cnn.tracking import MLflowLogger, RunIdInCheckpoint

MODEL = dict(layers=4, filters=32, norm="batch", dropout=0.1)


def plain_epoch(dm: FashionMNISTDataModule, batches: int, bf16: bool, seed: int) -> float:
    torch.manual_seed(seed)
    model = FashionCNN(**MODEL)
    net = model.net
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    start = time.perf_counter()
    total_loss = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    seen = 0
    for i, (images, labels) in enumerate(dm.train_dataloader()):
        if i == batches:
            break
        x = prepare_batch(images, FASHION_MNIST_MEAN, FASHION_MNIST_STD, True)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    _ = float(total_loss / seen), float(correct / seen)
    return time.perf_counter() - start


def lightning_epoch(dm: FashionMNISTDataModule, batches: int, precision: str, seed: int, root: Path) -> float:
    torch.manual_seed(seed)
    model = FashionCNN(**MODEL)
    logger = MLflowLogger(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", run_name="overhead")
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=[
            RunCheckpoint(root=str(root / "runs"), monitor="train/loss", save_last=True),
            RunIdInCheckpoint(),
            EpochSeed(),
            default_progress_bar(),
        ],
        precision=precision,
        enable_model_summary=False,
        enable_progress_bar=True,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=860, help="batches of 64 per epoch (860 = all 55,000)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    precision = fast_precision("cpu")
    bf16 = precision == "bf16-mixed"
    dm = FashionMNISTDataModule(batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        MLflowLogger(
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}"
        )  # an existing store, as after a first run
        # Warm-up, not timed: the first epoch in a process pays oneDNN's kernel creation (seen
        # here: 160 s for the first plain epoch against 30 s for the next ones).
        plain_epoch(dm, 20, bf16, 0)
        lightning_epoch(dm, 20, precision, 0, root)
        plain, light = [], []
        for r in range(args.rounds):
            plain.append(plain_epoch(dm, args.batches, bf16, r))
            light.append(lightning_epoch(dm, args.batches, precision, r, root))
            print(f"round {r}: plain {plain[-1]:.2f} s, lightning {light[-1]:.2f} s", flush=True)
    p, q = statistics.median(plain), statistics.median(light)
    print(
        f"\nprecision {precision}, {args.batches} batches of 64, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"plain PyTorch loop : {p:.2f} s (median of {args.rounds})")
    print(f"Lightning + MLflow : {q:.2f} s (median of {args.rounds})")
    print(f"ratio              : {q / p:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
