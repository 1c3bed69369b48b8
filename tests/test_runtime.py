import ctypes
import sys

import pytest

from offrl.runtime import keep_freed_memory_mapped


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mmapped_bytes_while_holding(libc, size: int) -> int:
    block = libc.malloc(size)
    try:
        return libc.mallinfo2().hblkhd
    finally:
        libc.free(block)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_large_blocks_come_from_the_heap_once_the_allocator_is_set():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = _MallInfo2
    size = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): mmap'd by default
    before = libc.mallinfo2().hblkhd
    assert keep_freed_memory_mapped() is True
    assert _mmapped_bytes_while_holding(libc, size) - before < size  # from the heap, kept after free
