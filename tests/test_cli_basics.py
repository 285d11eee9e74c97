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


def test_models_says_smollm2_starts_from_4bit_gguf_weights_once(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "4-bit" in line]
    assert len(notes) == 1  # said once
    note = notes[0]
    assert "Q4_1" in note
    assert "4-bit" in note and "dequantized once" in note and "about a minute" in note
    assert str(tmp_path / "cache" / "gguf") in note
    assert main(["models", "--json"]) == 0
    import json

    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "Q4_1" in rows["smollm2-135m"]["note"] and rows["minilm-l6"]["note"] == ""


def test_the_configuration_docs_say_the_same():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert "4-bit (Q4_1) GGUF" in text and "about a minute" in text


def test_a_reader_that_stops_early_gets_no_traceback():
    # `lmtune keys | head -1`: here the pipe has no reader from the start (deterministic), so the
    # first flush of the output meets a closed pipe
    child = ("import os, sys\n"
             "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
             "from lmtune.cli import main\n"
             "sys.exit(main(['keys']))\n")
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.returncode == 141
