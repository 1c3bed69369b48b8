"""Process-wide CPU settings the training commands run with."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory_mapped", "parse_integer_at_least", "resolve_device", "configure_process"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory_mapped() -> bool:
    """Let glibc's malloc keep large freed blocks instead of returning them to the OS.

    A CQL update allocates and frees the same multi-MB activation tensors every step. With glibc's defaults
    they are mmap'd and unmapped (or trimmed off the heap) each time, so every update page-faults its
    memory in afresh; keeping them mapped avoids those page faults (the `updates` rows of evaluation/bench.csv are
    measured with it; Intel's PyTorch CPU tuning guide makes the same point with jemalloc/tcmalloc).
    Returns False (and changes nothing) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
                and mallopt(_M_TOP_PAD, 64 << 20))


def parse_integer_at_least(text: str, minimum: int) -> int:
    """`text` as an integer >= minimum; ValueError with a one-line reason otherwise."""
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected {expected}, found {text!r}") from None
    if value < minimum:
        raise ValueError(f"expected {expected}, found {value}")
    return value


def resolve_device(device, name: str = "device"):
    """`device` (a string or torch.device) as a torch.device this machine has: cpu, cuda or cuda:N (mps where
    torch has it). Anything else is an OfflineRLError naming `name`, before a tensor or a file is made."""
    import torch

    from offrl.errors import OfflineRLError

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise OfflineRLError(f"{name} {device!r}: not a torch device; expected cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise OfflineRLError(f"{name} {device}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise OfflineRLError(f"{name} {device}: this machine has {count} CUDA device(s), "
                                 f"cuda:0 to cuda:{count - 1}")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise OfflineRLError(f"{name} {device}: MPS is not available on this machine")
    elif resolved.type != "cpu":
        raise OfflineRLError(f"{name} {device!r}: offrl runs on cpu, cuda or cuda:N, not {resolved.type}")
    return resolved


def configure_process(threads: int | None = None) -> None:
    """The settings every offrl program runs with: glibc keeps freed memory mapped, and torch uses `threads`
    intra-op threads (default: OFFRL_THREADS, else torch's choice). A bad OFFRL_THREADS is an OfflineRLError."""
    import torch

    from offrl.errors import OfflineRLError

    text = os.environ.get("OFFRL_THREADS", "").strip()
    if threads is None and text:
        try:
            threads = parse_integer_at_least(text, 1)
        except ValueError as exc:
            raise OfflineRLError(f"OFFRL_THREADS={text!r}: {exc} (torch intra-op threads)") from None
    keep_freed_memory_mapped()
    if threads:
        torch.set_num_threads(threads)
