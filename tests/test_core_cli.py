"""The estimation command line, single-process and under torchrun with two gloo processes."""

import subprocess
import sys

import torch
from conftest import correlated_latents, dense_covariance
from safetensors.torch import save_file

from gaussian_teleport.moments import estimate_moments, load_moments


def write_latents(folder, data, per_file):
    for i, part in enumerate(data.split(per_file)):
        save_file({"latent_tensor": part.float().contiguous()}, folder / f"{i:03d}.latent")


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=240)


def test_torchrun_two_processes_equal_one(tmp_path):
    data = correlated_latents(60, (2, 6, 6), seed=9)
    (tmp_path / "latents").mkdir()
    write_latents(tmp_path / "latents", data, per_file=7)
    single = run("-m", "gaussian_teleport.moments", "estimate", str(tmp_path / "latents"), "--out", str(tmp_path / "one.safetensors"),
                 "--structure", "stationary")
    assert single.returncode == 0, single.stderr
    multi = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "gaussian_teleport.moments", "estimate", str(tmp_path / "latents"), "--out", str(tmp_path / "two.safetensors"),
                "--structure", "stationary")
    assert multi.returncode == 0, multi.stderr
    a, b = load_moments(tmp_path / "one.safetensors"), load_moments(tmp_path / "two.safetensors")
    assert a.count == b.count == 60
    for x, y in zip(dense_covariance(a), dense_covariance(b)):
        torch.testing.assert_close(torch.as_tensor(x), torch.as_tensor(y), rtol=1e-5, atol=1e-6)
    direct = estimate_moments([data.float()], "stationary")
    torch.testing.assert_close(a.mean, direct.mean, rtol=1e-5, atol=1e-6)
    info = run("-m", "gaussian_teleport.moments", "info", str(tmp_path / "one.safetensors"))
    assert info.returncode == 0 and "stationary moments, latent 2×6×6" in info.stdout


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    (tmp_path / "bad.latent").write_bytes(b"\x80\x04not a safetensors file")
    out = run("-m", "gaussian_teleport.moments", "estimate", str(tmp_path / "bad.latent"),
              "--out", str(tmp_path / "m.safetensors"))
    assert out.returncode == 2 and "not a safetensors file" in out.stderr and "Traceback" not in out.stderr
