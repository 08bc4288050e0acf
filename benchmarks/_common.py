"""What every benchmark script shares: timing, the machine's description, peak memory."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from typing import Callable

import torch


def sync_for(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (GPU kernels run asynchronously)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> list[float]:
    """Wall-clock seconds of each of `repeats` runs of fn, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return float(statistics.median(values))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine_info(device: torch.device) -> dict:
    """CPU model and threads, GPU, torch version: the header of every results table."""
    info = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "bf16_cpu": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }
    return info


def peak_memory_mib(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated tensor memory (CUDA), MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
