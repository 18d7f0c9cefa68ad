"""glibc's malloc set for a process whose requests allocate arrays of KBs to hundreds of MBs: the server, and its
decode workers (app/decoding.py), whose decoded frames are freed once they are sent."""

from __future__ import annotations

import ctypes

# glibc malloc, tuned for a server whose requests allocate arrays of KBs to hundreds of MBs in worker threads
MMAP_THRESHOLD = 8 << 20  # blocks above this get their own mapping, returned to the system when freed
TRIM_THRESHOLD = 32 << 20  # free memory an arena keeps at its top instead of returning it
ARENA_MAX = 4  # arenas the worker threads share: what the arenas keep is at most ARENA_MAX * TRIM_THRESHOLD


def tune_malloc() -> None:
    """glibc serves allocations above the mmap threshold with their own mappings, returned to the system when freed;
    but it raises the threshold to the size of each mapped block freed, so after one request's arrays are freed the
    next request's land on the heap, where freed memory stays in the process. A fixed threshold keeps the decoded
    windows and feeds (tens of MBs for a long video) mapped, so RSS falls back after every request (about 100 MB
    less peak RSS after a few 5-minute videos).

    Memory below it is kept for the next request instead: mapped and trimmed memory is faulted in again page by page
    on its next use, and with a 1 MiB threshold (and glibc's 128 KiB trim threshold, which a fixed mmap threshold
    also fixes) the refined heatmaps' temporaries (1-2 MB each, in a worker thread's arena) took twice as long
    (10-s video: 24 -> 48 ms). A fixed trim threshold and a few shared arenas bound what is kept to
    ``ARENA_MAX * TRIM_THRESHOLD`` (128 MiB). No-op where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD (setting it turns the dynamic thresholds off)
        libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, ARENA_MAX)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
