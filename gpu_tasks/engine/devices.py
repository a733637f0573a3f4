"""Pick the device and dtype: cuda > mps > cpu; bf16 only where it is fast."""

from __future__ import annotations

import functools
import time

import torch
from django.conf import settings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BF16_SPEEDUP_NEEDED = 1.5  # below this, fp32's exactness is worth more than the time


def best_device() -> torch.device:
    from gpu_tasks.slots import process_device

    declared = process_device()
    if declared is not None:
        return declared
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def best_dtype(device: torch.device) -> torch.dtype:
    choice = settings.KEEL_DTYPE
    if choice != "auto":
        try:
            return DTYPES[choice]
        except KeyError:
            raise ValueError(
                f"KEEL_DTYPE={choice!r} is not one of auto, {', '.join(DTYPES)}"
            ) from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_bf16_speedup() >= BF16_SPEEDUP_NEEDED:
        return torch.bfloat16
    return torch.float32


@functools.cache
def cpu_bf16_speedup(size: int = 512, repeats: int = 5) -> float:
    """How much faster a bf16 matmul runs than fp32 on this CPU (AMX makes it ~4x;
    without it bf16 is often slower). Measured once per process, in about 0.1 s."""

    def seconds(dtype: torch.dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        a @ a  # warm up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - started)
        return best

    return seconds(torch.float32) / seconds(torch.bfloat16)


def describe(device: torch.device, dtype: torch.dtype, *, with_name: bool = True) -> str:
    """ "cpu float32", or with the GPU's index and name; without it, what calibration
    scores are keyed by (any two GPUs of a kind give the same numbers)."""
    precision = str(dtype).removeprefix("torch.")
    if device.type == "cuda" and with_name:
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()} {precision}"
    return f"{device.type} {precision}"
