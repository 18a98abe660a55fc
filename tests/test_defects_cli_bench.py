"""Issue 19, items 8 and 12 (benchmarks): refusals before the work, no leftovers, committed results left alone."""

import importlib.util
import os
import tempfile

import pytest

from gaussian_teleport.bench import RESULTS, core_jump_cost, core_moments_size
from gaussian_teleport.bench import run as bench_run


def refused(capsys, fn, argv):
    with pytest.raises(SystemExit) as stop:
        fn(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def no_work(monkeypatch):
    monkeypatch.setattr(bench_run, "run_model", lambda *a: pytest.fail("started the work before refusing"))


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The system temp folder, redirected so a test sees what is left in it."""
    folder = tmp_path / "systemp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_refusals_come_before_the_work(tmp_path, capsys, no_work):
    existing = tmp_path / "results.txt"
    existing.write_text("mine")
    cases = [
        (["--samples", "0"], "argument --samples: got 0; give at least 2 samples per seed set"),
        (["--samples", "-5"], "argument --samples: got -5"),
        (["--sets", "1"], "argument --sets: got 1; the verdicts compare at least 2 seed sets"),
        (["--out", str(existing)], f"--out {existing} is a file; give a folder"),
        (["--reuse", "--out", str(tmp_path)], "--reuse reads " + os.path.join(str(tmp_path), "results.json") +
         ", which does not exist"),
        (["--quick", "--reuse"], "--reuse reads <--out>/results.json, and a --quick run has no folder of its own"),
    ]
    for argv, message in cases:
        assert message in refused(capsys, bench_run.main, argv), argv
    assert existing.read_text() == "mine"


def fake_benchmark(monkeypatch, fail=False):
    def write_reports(results, calibration, opts, seconds):
        os.makedirs(opts.out, exist_ok=True)
        with open(os.path.join(opts.out, "summary.md"), "w", encoding="utf-8") as f:
            f.write("# the summary\n")

    def run_model(name, opts):
        if fail:
            raise RuntimeError("stopped")
        return {"model": name}

    monkeypatch.setattr(bench_run, "run_model", run_model)
    monkeypatch.setattr(bench_run, "save_progress", lambda *a: None)
    monkeypatch.setattr(bench_run, "write_reports", write_reports)


def test_a_quick_run_leaves_no_folder_in_the_system_temp_dir(scratch, capsys, monkeypatch):
    fake_benchmark(monkeypatch)
    bench_run.main(["--quick", "--models", "digits", "--parts", "ev"])
    out = capsys.readouterr().out
    assert "# the summary" in out and "a quick run keeps nothing; give --out FOLDER to keep its reports" in out
    assert os.listdir(scratch) == []


def test_a_stopped_quick_run_leaves_no_folder_either(scratch, monkeypatch):
    fake_benchmark(monkeypatch, fail=True)
    with pytest.raises(RuntimeError, match="stopped"):
        bench_run.main(["--quick", "--models", "digits", "--parts", "ev"])
    assert os.listdir(scratch) == []


def test_a_quick_run_with_out_keeps_its_reports(tmp_path, scratch, monkeypatch):
    fake_benchmark(monkeypatch)
    bench_run.main(["--quick", "--models", "digits", "--parts", "ev", "--out", str(tmp_path / "keep")])
    assert (tmp_path / "keep" / "summary.md").is_file() and os.listdir(scratch) == []


def test_a_run_into_the_committed_results_says_so_before_it_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_run, "run", lambda opts: print("started"))
    bench_run.main(["--models", "digits"])
    said, started = capsys.readouterr().out.split("started")
    assert f"writing into {RESULTS}: the reports replace the committed ones (give --out FOLDER" in said
    bench_run.main(["--models", "digits", "--out", str(tmp_path)])
    assert "replace the committed ones" not in capsys.readouterr().out


def committed(name):
    path = os.path.join(RESULTS, name)
    return os.path.getmtime(path) if os.path.exists(path) else None


def test_the_moments_size_benchmark_leaves_the_committed_report_alone_by_default(scratch, capsys, monkeypatch):
    monkeypatch.setattr(core_moments_size, "SIZES", {"tiny": (2, 8, 8)})
    before = committed("core_moments_size.md")
    core_moments_size.main([])      # the full run's settings (not --quick), on a small latent
    out = capsys.readouterr().out
    written = out.strip().splitlines()[-1].removeprefix("wrote ").strip()
    assert committed("core_moments_size.md") == before
    assert os.path.realpath(written).startswith(os.path.realpath(scratch)) and written.endswith("core_moments_size.md")
    assert "give --out" in out and "to replace the committed report" in out


@pytest.mark.parametrize("script", [core_moments_size, core_jump_cost], ids=["moments-size", "jump-cost"])
def test_a_quick_core_benchmark_leaves_no_folder_behind(scratch, capsys, monkeypatch, script):
    if script is core_jump_cost:
        pytest.importorskip("diffusers")
        monkeypatch.setattr(core_jump_cost, "unet_call_seconds", lambda cfg, repeats: 0.1)   # the UNet is not the point
    script.main(["--quick", "--repeats", "1"] if script is core_jump_cost else ["--quick"])
    out = capsys.readouterr().out
    assert "| tiny | 4×16×16 |" in out and "a --quick run keeps nothing; give --out FOLDER to keep its report" in out
    # torch's own (empty, persistent) compile cache folder, made when diffusers is imported, is not the benchmark's
    assert [name for name in os.listdir(scratch) if not name.startswith("torchinductor_")] == []


def test_a_report_goes_into_a_folder_given_as_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(core_moments_size, "SIZES", {"tiny": (2, 8, 8)})
    core_moments_size.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "core_moments_size.md").is_file()


def test_the_jump_cost_benchmark_says_it_needs_diffusers(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    err = refused(capsys, core_jump_cost.main, ["--quick"])
    assert "comes from diffusers, which is not installed: pip install diffusers" in err


@pytest.mark.parametrize("build", [bench_run.build_parser, core_jump_cost.build_parser, core_moments_size.build_parser])
def test_every_option_shows_its_default(build):
    for action in build()._actions:
        if action.option_strings != ["-h", "--help"]:
            assert action.help and "default" in action.help, action.option_strings
