"""Small things every command line has: the version."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmtune import __version__
from lmtune.cli import main


def test_version_prints_name_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"lmtune {__version__}"
    assert err == ""


def test_version_from_the_command_line():
    r = subprocess.run([sys.executable, "-m", "lmtune", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"lmtune {__version__}"
