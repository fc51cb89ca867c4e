"""Hardware capability checks that pick fast defaults without slowing down other machines."""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), so autocast pays off.

    Without these instructions PyTorch emulates bf16 on the CPU, which is slower than fp32, so the
    answer must be a real capability check, not "bf16 is supported".
    """
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def fast_precision(accelerator: str) -> str:
    """The Trainer precision to use by default on ``accelerator`` ("cpu", "gpu"/"cuda", "mps")."""
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    if accelerator == "cpu" and cpu_has_fast_bf16():
        return "bf16-mixed"
    return "32-true"
