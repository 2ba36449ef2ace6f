"""credo requires Python >= 3.11 (tomllib): pyproject, the import-time check and setup.sh agree."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import credo

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_and_the_import_check_agree():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert spec.split("#")[0].strip() == f">={credo.MIN_PYTHON[0]}.{credo.MIN_PYTHON[1]}"
    assert sys.version_info[:2] >= credo.MIN_PYTHON  # CI's interpreter is a supported one


def test_an_old_interpreter_gets_a_clear_error():
    with pytest.raises(RuntimeError, match=r"credo needs Python >= 3\.11; this is Python 3\.10\.12"):
        credo.check_python((3, 10, 12))
    credo.check_python((3, 11, 0))
    credo.check_python((3, 13, 1))


def test_setup_refuses_an_old_python(tmp_path):
    fake = tmp_path / "python3"  # an interpreter that reports 3.10 through sys.version_info
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.exit(1)'\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env={"PYTHON": str(fake), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1 and "credo needs Python >= 3.11" in proc.stderr
