"""release_free_memory hands freed heap pages back to the system."""

from __future__ import annotations

import sys

import pytest
from engram.heap import release_free_memory


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
def test_freed_pages_between_live_blocks_leave_rss() -> None:
    # 64 MB in 16 KB blocks, each followed by a small block that stays: freeing the big ones
    # leaves holes that malloc cannot give back by itself (they are not at the heap's top).
    big, small = [], []
    for n in range(4096):
        big.append(bytes(16384 - n % 7))  # distinct sizes: no size-class reuse between them
        small.append(bytes(600))
    big.clear()
    before = _rss_anon_kib()
    assert release_free_memory()
    assert before - _rss_anon_kib() > 32 * 1024
    assert len(small) == 4096
