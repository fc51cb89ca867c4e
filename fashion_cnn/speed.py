"""The machine: hardware capability checks that pick fast defaults, and the facts a run records."""

from __future__ import annotations

import functools
import logging
import os
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
    return cpu_bf16_feature() is not None


def cpu_bf16_feature() -> str | None:
    """The instruction set that gives this CPU native bf16 ("AVX512-BF16", "AMX-BF16"), else None."""
    flags = set(_cpuinfo("flags").split())
    return next((name for flag, name in _BF16_FLAGS.items() if flag in flags), None)


_BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}  # /proc/cpuinfo flag -> name


@functools.cache
def _cpuinfo(field: str) -> str:
    """The first ``field`` of /proc/cpuinfo ("" where there is none, or no Linux)."""
    if platform.system() != "Linux":
        return ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return ""


def machine_tags() -> dict[str, str]:
    """Where a run trains, as MLflow tags: host, CPU model and cores, torch threads, GPU, torch.

    Results and timings depend on the machine (bf16 or not, threads), so every run records it.
    """
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "machine.host": platform.node(),
        "machine.cpu": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "machine.cores": str(os.cpu_count()),
        "machine.torch_threads": str(torch.get_num_threads()),
        "machine.gpu": gpu,
        "machine.torch": torch.__version__,
    }


def fast_precision(accelerator: str) -> str:
    """The Trainer precision to use by default on ``accelerator`` ("cpu", "gpu"/"cuda", "mps")."""
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    if accelerator == "cpu" and cpu_has_fast_bf16():
        return "bf16-mixed"
    return "32-true"
