"""Smoke runs of the core benchmarks (their --quick modes): they run and write their tables."""

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "bench")


def run(script, out, *extra):
    return subprocess.run([sys.executable, os.path.join(BENCH, script), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=240)


def test_moments_size_quick(tmp_path):
    done = run("core_moments_size.py", tmp_path / "size.md")
    assert done.returncode == 0, done.stderr
    rows = [line for line in (tmp_path / "size.md").read_text().splitlines() if line.startswith("| tiny")]
    assert [r.split("|")[3].strip() for r in rows] == ["lowrank", "stationary"]


def test_jump_cost_quick(tmp_path):
    pytest.importorskip("diffusers")
    done = run("core_jump_cost.py", tmp_path / "jump.md", "--threads", "1", "--clock", "cpu")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "jump.md").read_text()
    assert "--quick --threads 1 --clock cpu` on 1 CPU thread(s)" in text and "CPU times of the process" in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny")]
    assert {r.split("|")[3].strip() for r in rows} == {"lowrank", "stationary", "dense"}
    for r in rows:      # the jump's and the Gaussian solver step's time and share of the UNet call
        jump_ms, jump_pct, step_ms, step_pct = (c.strip() for c in r.split("|")[6:10])
        assert float(step_ms) > 0 and step_pct.endswith("%") and jump_pct.endswith("%"), r


@pytest.mark.parametrize("script", ["core_jump_cost.py", "core_moments_size.py"])
def test_a_quick_run_never_replaces_the_committed_report(script):
    from gaussian_teleport.bench import RESULTS

    report = os.path.join(RESULTS, script.replace(".py", ".md"))
    before = os.path.getmtime(report)
    for out in (RESULTS, report):
        done = subprocess.run([sys.executable, os.path.join(BENCH, script), "--quick", "--out", out],
                              capture_output=True, text=True, timeout=240)
        assert done.returncode != 0 and "would replace the committed" in done.stderr, done.stderr
    assert os.path.getmtime(report) == before


def test_a_quick_run_without_out_prints_its_report_and_keeps_no_file(tmp_path):
    (tmp_path / "systemp").mkdir()
    done = subprocess.run([sys.executable, os.path.join(BENCH, "core_moments_size.py"), "--quick"],
                          capture_output=True, text=True, timeout=240, cwd=str(tmp_path),
                          env={**os.environ, "TMPDIR": str(tmp_path / "systemp")})
    assert done.returncode == 0, done.stderr
    assert "| tiny | 4×16×16 | lowrank |" in done.stdout and "wrote " not in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "a --quick run keeps nothing; give --out FOLDER to keep its report"
    assert os.listdir(tmp_path / "systemp") == [] and sorted(os.listdir(tmp_path)) == ["systemp"]
