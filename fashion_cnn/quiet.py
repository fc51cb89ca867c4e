"""The console's scope: which third-party messages a run keeps off the console, and our log lines on it.

Every filter here names one message of one library, by its text and the module (or logger) that
emits it, and is installed only for the duration of :func:`console_scope`, never at import: a
program that imports fashion_cnn keeps all its warnings. What is filtered is either advice no user
of ``fashion-cnn`` can act on (a cloud-logging tip, a deprecation inside Lightning's own code, a
model-size estimate that does not know bf16) or a line the run's header and summary already say
(device, precision, seed, the checkpoint the test loads). ``--verbose`` installs none of them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from typing import TextIO

# (message regex, category, module regex) of warnings.warn calls nobody running fashion-cnn can act on.
QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # Lightning 2.6's ModelSummary sizes parameters in 32 bits under bf16-mixed; so do we (the
    # weights are fp32 under autocast), so the estimate is right and the warning is noise.
    (
        r"Precision .* is not supported by the model summary",
        UserWarning,
        r"lightning\.pytorch\.utilities\.model_summary",
    ),
    # torch 2.14 deprecates LeafSpec; Lightning's own _pytree.py still uses it (nothing for us to change).
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
    ),
)

# logger name -> regexes of the log lines it emits that are kept off the console.
QUIET_LOG_LINES: dict[str, tuple[str, ...]] = {
    # A new sqlite store: MLflow announces its schema migration on every first run in a folder.
    "mlflow.store.db.utils": (r"^Creating initial MLflow database tables", r"^Updating database tables"),
    # Lightning's advertisements, and the decisions the run's header states with their reason.
    **dict.fromkeys(
        ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"),
        (
            r"^💡 Tip: ",
            r"^(GPU|TPU|HPU) available: ",
            r"^Using (16bit|bfloat16) Automatic Mixed Precision",
            r"^Restoring states from the checkpoint path at ",
            r"^Loaded model weights from the checkpoint at ",
        ),
    ),
    "lightning.fabric.utilities.seed": (r"^(\[rank: \d+\] )?Seed set to ",),
}


class _DropLines(logging.Filter):
    """Drops the records whose message matches one of ``patterns``."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


class ConsoleFormatter(logging.Formatter):
    """Our INFO lines as they are (the header, the summary); warnings and errors name their source."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING or record.levelno < logging.INFO:
            text = f"{record.levelname} {record.name}: {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@contextlib.contextmanager
def console_scope(verbose: bool = False, stream: TextIO | None = None) -> Iterator[None]:
    """The console of one command: fashion_cnn's log lines on ``stream``, third-party noise off it.

    Inside the block, ``fashion_cnn`` logs INFO and above to ``stream`` (stderr by default; DEBUG
    with ``verbose``) and the :data:`QUIET_WARNINGS` / :data:`QUIET_LOG_LINES` are filtered unless
    ``verbose``. Everything is put back afterwards: the warning filters, the logger filters, the
    handler and the level.

    Args:
        verbose: Filter nothing and show fashion_cnn's DEBUG lines too.
        stream: Where the log lines go (default: ``sys.stderr`` at the time of the call).
    """
    package = logging.getLogger("fashion_cnn")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(ConsoleFormatter())
    level = package.level
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    package.addHandler(handler)
    installed: list[tuple[logging.Logger, logging.Filter]] = []
    if not verbose:
        for name, patterns in QUIET_LOG_LINES.items():
            installed.append((logging.getLogger(name), _DropLines(patterns)))
    for logger, drop in installed:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            if not verbose:
                for message, category, module in QUIET_WARNINGS:
                    warnings.filterwarnings("ignore", message=message, category=category, module=module)
            yield
    finally:
        for logger, drop in installed:
            logger.removeFilter(drop)
        package.removeHandler(handler)
        package.setLevel(level)
