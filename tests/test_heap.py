"""Large tensors from the heap while a run trains (lmtune/training/cpu/heap.py), and glibc's defaults after.

Each case runs in a fresh interpreter: what malloc does with a request depends on the free blocks
the process already holds (after other tests' runs, a large request may be served from one), so
the cases need a heap of known shape."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from lmtune.training.cpu import heap

LIBC = heap.glibc()
pytestmark = pytest.mark.skipif(LIBC is None or not hasattr(LIBC, "mallinfo2"), reason="glibc (2.33+) only")

PRELUDE = """
import ctypes, json, resource
import torch
from lmtune.core import memory
from lmtune.training.cpu import heap

MB = 1024 * 1024

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = heap.glibc()
libc.mallinfo2.restype = MallInfo2
start = libc.mallinfo2().hblkhd
out = {}

def mapped(mb):
    # Whether a fresh tensor of `mb` MB is held in an mmap'd block (else in the heap).
    t = torch.ones(mb * MB // 4)
    grown = libc.mallinfo2().hblkhd - start
    del t
    return grown >= mb * MB

def faults(mb):
    # Page faults while a fresh tensor of `mb` MB is made and filled.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(mb * MB // 4)
    n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del t
    return n
"""


def run_fresh(body: str) -> dict:
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_large_tensor_is_mapped_outside_a_run_and_comes_from_the_heap_inside():
    out = run_fresh("""
        out["before"] = mapped(64)
        with heap.kept_in_heap():
            out["inside"] = mapped(128)  # (freed: a 128 MB block stays in the heap, its pages mapped)
            out["reused_faults"] = faults(64)
        out["after"] = mapped(256)  # (larger than any free block: glibc's own choice again)
    """)
    assert out["before"] is True
    assert out["inside"] is False
    assert out["reused_faults"] < 64 * 1024 * 1024 // 4096 // 100  # none of its 16,384 pages faulted in again
    assert out["after"] is True


def test_nested_runs_restore_the_defaults_once_at_the_end():
    out = run_fresh("""
        with heap.kept_in_heap():
            with heap.kept_in_heap():
                pass
            out["outer"] = mapped(64)  # the outer run still serves it from the heap
        out["after"] = mapped(256)
    """)
    assert out == {"outer": False, "after": True}


def test_disabled_changes_nothing():
    out = run_fresh("""
        with heap.kept_in_heap(enabled=False):
            out["inside"] = mapped(64)
    """)
    assert out == {"inside": True}


def test_the_heap_is_handed_back_between_steps_only_above_the_limit():
    out = run_fresh("""
        with heap.kept_in_heap():
            t = torch.ones(256 * MB // 4)
            del t  # (freed: its pages stay in the heap, still resident)
            held = memory.resident_bytes()
            out["under"] = heap.trim_above(held + 64 * MB)
            out["kept"] = memory.resident_bytes() > held - 64 * MB
            out["over"] = heap.trim_above(held - 128 * MB)
            out["given_back"] = held - memory.resident_bytes()
        out["outside"] = heap.trim_above(0)  # (outside a run malloc gives memory back by itself)
    """)
    assert out["under"] is False and out["kept"] is True
    assert out["over"] is True and out["given_back"] > 200 * 1024 * 1024
    assert out["outside"] is False
