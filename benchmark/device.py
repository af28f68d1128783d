"""Device choice, mixed precision and seeding: one code path for CUDA and CPU."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` ('cuda', 'cpu', 'cuda:1') or env PHBENCH_DEVICE, else CUDA when present."""
    requested = requested or os.environ.get("PHBENCH_DEVICE")
    if requested:
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op context on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# glibc mallopt parameters (malloc.h) and the values retain_cpu_heap sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_HEAP_SETTINGS = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20}


def retain_cpu_heap() -> bool:
    """Keep freed CPU tensor memory in the process heap (glibc ``mallopt``); True where it was set.

    Why: torch frees each multi-MB CPU activation back to glibc, which returns the top of its heap to the OS
    beyond a small threshold, so the next forward page-faults the same megabytes in again. Measured on 2 cores
    in fresh processes: table1's AE trains 1.23× and IterMask2 1.14× faster, IterMask2 scores 1.03× faster,
    for up to 7 % more peak memory (a narrow 128-px UNet forward on one thread: 1.15×). Blocks under 32 MB now come
    from the heap, which keeps up to 1 GB of freed memory at its top and grows 64 MB at a time. It changes no
    result. Called by the CLI and sweep jobs; ``PHBENCH_MALLOC=default`` (or a libc other than glibc) leaves
    the allocator as it is.
    """
    if os.environ.get("PHBENCH_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return all(mallopt(param, value) == 1 for param, value in _HEAP_SETTINGS.items())


_Part = TypeVar("_Part")
_Out = TypeVar("_Out")


def parts_for_cpu_threads(n: int, chunk: int) -> list[slice]:
    """``range(n)`` as consecutive slices of ≤ ``chunk`` items, as many as gives every worker of
    :func:`map_on_cpu_threads` (one per torch thread) the same number of parts (or n parts of one).

    Why: the workers of one call finish together only if none holds an extra part; the sizes differ by one at most.
    """
    workers = torch.get_num_threads()
    k = min(n, workers * math.ceil(n / (chunk * workers)))
    ends = [n * (i + 1) // k for i in range(k)]
    return [slice(a, b) for a, b in zip([0, *ends[:-1]], ends)]


def map_on_cpu_threads(fn: Callable[[_Part], _Out], parts: Sequence[_Part]) -> list[_Out]:
    """``[fn(p) for p in parts]``, spread over one Python thread per torch CPU thread, each running torch on one.

    Why: a forward of a narrow network on a few slices is a chain of small ops, and splitting each op over
    the intra-op threads leaves them waiting at every op's barrier; independent parts on single-threaded
    workers keep each core busy (torch releases the GIL inside ops). Worker k takes parts k, k + workers, …;
    the results come back in the order of ``parts``. The caller's grad and inference modes carry over; ``fn``
    enters its own autocast (it is thread-local).
    With one torch thread or one part it is the plain loop. The torch thread count is restored afterwards.
    """
    threads = torch.get_num_threads()
    if threads < 2 or len(parts) < 2:
        return [fn(p) for p in parts]
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()
    workers = min(threads, len(parts))

    def worker(k: int) -> list[tuple[int, _Out]]:
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return [(i, fn(parts[i])) for i in range(k, len(parts), workers)]

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = [pair for got in pool.map(worker, range(workers)) for pair in got]
    finally:
        torch.set_num_threads(threads)
    return [out for _, out in sorted(done, key=lambda pair: pair[0])]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return float("nan")
