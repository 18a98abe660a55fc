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


def test_a_folder_with_an_earlier_moments_file_counts_latents_only(tmp_path):
    data = correlated_latents(20, (2, 3, 3), seed=4)
    write_latents(tmp_path, data, per_file=5)
    first = run("-m", "gaussian_teleport.moments", "estimate", str(tmp_path), "--out", str(tmp_path / "m.safetensors"))
    assert first.returncode == 0, first.stderr
    again = run("-m", "gaussian_teleport.moments", "estimate", str(tmp_path), "--out",
                str(tmp_path / "m2.safetensors"))
    assert again.returncode == 0 and "skipping" in again.stderr and "moments file" in again.stderr
    assert load_moments(tmp_path / "m2.safetensors").count == 20


def test_outputs_and_inputs_are_checked_before_any_work(tmp_path):
    data = correlated_latents(8, (2, 3, 3), seed=5)
    write_latents(tmp_path, data, per_file=4)
    cases = [
        ([str(tmp_path / "missing.latent")], tmp_path / "a.safetensors", "no such file or folder"),
        ([str(tmp_path / "*.nothing")], tmp_path / "a.safetensors", "no files match"),
        ([str(tmp_path)], tmp_path / "absent" / "a.safetensors", "folder of --out does not exist"),
    ]
    (tmp_path / "exists.safetensors").write_bytes(b"")
    cases.append(([str(tmp_path / "000.latent")], tmp_path / "exists.safetensors", "already exists"))
    for inputs, out, message in cases:
        done = run("-m", "gaussian_teleport.moments", "estimate", *inputs, "--out", str(out))
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_moments_from_a_reference_model_on_the_command_line(tmp_path):
    done = run("-m", "gaussian_teleport.moments", "from-model", "--model", "digits", "--out",
               str(tmp_path / "d.safetensors"))
    assert done.returncode == 0, done.stderr
    m = load_moments(tmp_path / "d.safetensors")
    assert m.space == "model" and m.metadata["source"] == "model" and "model calls" in done.stdout


def test_calibration_on_the_command_line():
    done = run("-m", "gaussian_teleport.scheduler", "calibrate", "--model", "digits", "--sampler", "euler",
               "--schedule", "sd", "--steps", "8", "--samples", "4", "--mean", "data")
    assert done.returncode == 0, done.stderr
    assert "steps replaced   hand-off σ" in done.stdout and "mean from the data" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("hand-off σ") or last.startswith("do not teleport")
    bad = run("-m", "gaussian_teleport.scheduler", "calibrate", "--model", "digits", "--samples", "1")
    assert bad.returncode == 2 and "at least 2 noise samples" in bad.stderr and "Traceback" not in bad.stderr


def test_the_calibration_command_starts_flow_models_at_the_noise_itself():
    from gaussian_teleport.scheduler.__main__ import start_latent
    from gaussian_teleport.scheduler.parameterization import FLOW, VE

    noise, sigmas = torch.ones(2, 1, 2, 2), torch.tensor([14.6, 1.0, 0.0])
    for flow in ("flow", FLOW):
        assert torch.equal(start_latent(noise, sigmas, flow), noise)
    for ve in ("ve", VE):
        assert torch.equal(start_latent(noise, sigmas, ve), noise * 14.6)
