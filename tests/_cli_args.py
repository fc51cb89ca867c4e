"""CLI arguments shared by the tests that run real fits on the synthetic data."""

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
