"""Issue 19, items 3, 9 and 12: `moments` checks --latent-format, WORLD_SIZE and --out before it works or waits."""

import os
import socket
import struct
import subprocess
import sys
import time

import pytest
from conftest import correlated_latents
from safetensors.torch import save_file

from gaussian_teleport.moments import __main__ as moments_cli
from gaussian_teleport.moments import load_moments
from gaussian_teleport.moments.__main__ import main, parser


@pytest.fixture
def latents(tmp_path):
    for i, part in enumerate(correlated_latents(12, (4, 2, 2), seed=3).float().split(4)):
        save_file({"latent_tensor": part.contiguous()}, tmp_path / f"{i}.latent")
    return tmp_path


def estimate(folder, *options):
    return main(["estimate", str(folder), "--out", str(folder / "m.safetensors"), *options])


# ----------------------------------------------------------------------------
# Item 3.


@pytest.mark.parametrize("name, message", [
    ("sd15", "unknown latent format 'sd15' (did you mean 'SD15'?); choose one of none, Flux, SD15, SD3, SDXL"),
    ("SD99", "unknown latent format 'SD99'; choose one of none, Flux, SD15, SD3, SDXL"),
])
def test_an_unknown_latent_format_is_a_usage_error(latents, capsys, name, message):
    with pytest.raises(SystemExit) as done:
        estimate(latents, "--latent-format", name)
    assert done.value.code == 2 and message in capsys.readouterr().err
    assert not (latents / "m.safetensors").exists()


def test_a_format_with_another_channel_count_is_refused(latents, capsys):
    assert estimate(latents, "--latent-format", "Flux") == 2
    assert "Flux latents have 16 channels but these latents have 4" in capsys.readouterr().err
    assert not (latents / "m.safetensors").exists()


def test_a_known_format_is_written_into_the_file(latents):
    assert estimate(latents, "--latent-format", "SDXL") == 0
    assert load_moments(latents / "m.safetensors").latent_format == "SDXL"


# ----------------------------------------------------------------------------
# Item 9.


@pytest.mark.parametrize("value", ["abc", "0", "-2", "2.5", ""])
def test_a_world_size_that_is_not_a_process_count_is_refused(latents, capsys, monkeypatch, value):
    monkeypatch.setenv("WORLD_SIZE", value)
    assert estimate(latents) == 2
    err = capsys.readouterr().err
    assert f"WORLD_SIZE={value!r} in the environment is not a process count" in err and "torchrun" in err
    assert "invalid literal" not in err


def test_world_size_without_torchrun_says_what_it_needs(latents, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert estimate(latents) == 2
    err = capsys.readouterr().err
    assert "waiting up to 60 s for the other 2 process(es)" in err
    assert "could not join the other 2 process(es)" in err and "torchrun --nproc_per_node" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_peer_times_out_quickly_with_a_message(latents):
    """With every variable torchrun sets but no second process, the wait ends after --join-timeout, not 30 min."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gaussian_teleport.moments", "estimate", str(latents), "--out",
                           str(latents / "m.safetensors"), "--join-timeout", "2"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - began < 60
    assert "waiting up to 2 s for the other 1 process(es) to join" in done.stderr
    assert "could not join the other 1 process(es)" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_join_timeout_that_is_not_positive_is_refused(latents, capsys, value):
    assert estimate(latents, "--join-timeout", value) == 2
    assert "--join-timeout must be a number of seconds > 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# Item 12: an --out folder, a header nested too deeply, the help texts.


def test_an_out_that_is_a_folder_is_refused_before_the_work(latents, capsys, monkeypatch):
    monkeypatch.setattr(moments_cli, "read_latents", lambda path: pytest.fail("read latents before refusing"))
    folder = latents / "outdir"
    folder.mkdir()
    assert main(["estimate", str(latents), "--out", str(folder), "--overwrite"]) == 2
    assert f"--out {folder} is a folder; give a file name such as" in capsys.readouterr().err
    assert sorted(p.name for p in latents.iterdir()) == ["0.latent", "1.latent", "2.latent", "outdir"]


def test_a_header_nested_too_deeply_is_one_line_from_info(tmp_path, capsys):
    path = tmp_path / "nested.safetensors"
    header = b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} has a malformed safetensors header (JSON nested too deeply to read)")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["estimate", "from-model"])
def test_every_option_shows_its_default(command):
    sub = parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.option_strings != ["-h", "--help"]:
            assert action.help and "default" in action.help, action.option_strings
