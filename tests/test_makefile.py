"""`make install` takes torch from PyTorch's CPU index on a machine without an NVIDIA GPU, and from
the configured index alone where `nvidia-smi` finds one (checked with `make -n`, nothing installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def torch_line(bin_dir: Path) -> str:
    # a make of its own, not a part of the `make test` that may be running this test
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    out = subprocess.run(["make", "-n", "-B", "install"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return next(line for line in out.splitlines() if "torch==" in line)


def fake_nvidia_smi(bin_dir: Path, status: int) -> None:
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\necho 'GPU 0: NVIDIA H100'\nexit {status}\n")
    tool.chmod(0o755)


@pytest.mark.skipif(any(Path(d, "nvidia-smi").exists() for d in ("/usr/bin", "/bin")), reason="nvidia-smi is installed")
def test_without_a_gpu_torch_comes_from_the_cpu_index(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    assert CPU_INDEX in torch_line(empty)


def test_a_failing_nvidia_smi_is_no_gpu(tmp_path):
    fake_nvidia_smi(tmp_path / "bin", 9)
    assert CPU_INDEX in torch_line(tmp_path / "bin")


def test_with_a_gpu_torch_comes_from_the_configured_index(tmp_path):
    fake_nvidia_smi(tmp_path / "bin", 0)
    line = torch_line(tmp_path / "bin")
    assert "install -q" in line and CPU_INDEX not in line
