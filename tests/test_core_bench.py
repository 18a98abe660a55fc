"""Smoke runs of the core benchmarks (their --quick modes): they run and write their tables."""

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "bench")


def run(script, out):
    return subprocess.run([sys.executable, os.path.join(BENCH, script), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)


def test_moments_size_quick(tmp_path):
    done = run("core_moments_size.py", tmp_path / "size.md")
    assert done.returncode == 0, done.stderr
    rows = [line for line in (tmp_path / "size.md").read_text().splitlines() if line.startswith("| tiny")]
    assert [r.split("|")[3].strip() for r in rows] == ["lowrank", "stationary"]


def test_jump_cost_quick(tmp_path):
    pytest.importorskip("diffusers")
    done = run("core_jump_cost.py", tmp_path / "jump.md")
    assert done.returncode == 0, done.stderr
    rows = [line for line in (tmp_path / "jump.md").read_text().splitlines() if line.startswith("| tiny")]
    assert {r.split("|")[3].strip() for r in rows} == {"lowrank", "stationary", "dense"}


def test_a_quick_run_without_out_prints_its_report_and_keeps_no_file(tmp_path):
    (tmp_path / "systemp").mkdir()
    done = subprocess.run([sys.executable, os.path.join(BENCH, "core_moments_size.py"), "--quick"],
                          capture_output=True, text=True, timeout=240, cwd=str(tmp_path),
                          env={**os.environ, "TMPDIR": str(tmp_path / "systemp")})
    assert done.returncode == 0, done.stderr
    assert "| tiny | 4×16×16 | lowrank |" in done.stdout and "wrote " not in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "a --quick run keeps nothing; give --out FOLDER to keep its report"
    assert os.listdir(tmp_path / "systemp") == [] and sorted(os.listdir(tmp_path)) == ["systemp"]
