"""install.py as A1111/Forge run it (a ``launch`` module on the path) and as ComfyUI-Manager runs it (none)."""

import importlib.util
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(ROOT, "install.py")

FAKE_LAUNCH = textwrap.dedent("""
    import json, os
    MISSING = set(os.environ.get("FAKE_MISSING", "").split(","))
    def is_installed(package):
        return package not in MISSING
    def run_pip(command, desc=None, live=False):
        with open(os.environ["FAKE_LOG"], "a") as f:
            f.write(json.dumps([command, desc]) + "\\n")
""")


def run_install(tmp_path, launch=True, missing=""):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if launch:
        (tmp_path / "launch.py").write_text(FAKE_LAUNCH)
        env["PYTHONPATH"] = str(tmp_path)          # A1111 puts its own folder on PYTHONPATH
    env.update(FAKE_MISSING=missing, FAKE_LOG=str(tmp_path / "pip.log"))
    out = subprocess.run([sys.executable, INSTALL], cwd=str(tmp_path / "cwd"), env=env, capture_output=True,
                         text=True)
    log = (tmp_path / "pip.log").read_text().splitlines() if (tmp_path / "pip.log").exists() else []
    return out, log


def test_with_launch_installs_only_what_is_missing(tmp_path):
    (tmp_path / "cwd").mkdir()
    out, log = run_install(tmp_path, missing="safetensors")
    assert out.returncode == 0, out.stderr
    assert log == ['["install \\"safetensors>=0.4\\"", "safetensors>=0.4 for Gaussian Teleport"]']


def test_with_launch_and_everything_present_does_nothing(tmp_path):
    (tmp_path / "cwd").mkdir()
    out, log = run_install(tmp_path)
    assert out.returncode == 0 and log == [] and out.stdout == ""


def test_without_launch_runs_and_finds_everything(tmp_path):
    """ComfyUI-Manager: no launch module; all requirements are present here, so pip is not called."""
    (tmp_path / "cwd").mkdir()
    out, log = run_install(tmp_path, launch=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and log == []


def test_without_launch_falls_back_to_pip(monkeypatch):
    spec = importlib.util.spec_from_file_location("gaussian_teleport_install_under_test", INSTALL)
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    calls = []
    monkeypatch.setattr(install, "host_launch", lambda: None)
    monkeypatch.setattr(install.subprocess, "check_call", calls.append)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(install.importlib.util, "find_spec",
                        lambda name, *a: None if name == "numpy" else real_find_spec(name, *a))
    install.main()
    assert calls == [[sys.executable, "-m", "pip", "install", "numpy"]]
