"""Issue 19, items 1, 12 and 14 (demo): the demo's output file and its input errors."""

import builtins
import subprocess
import sys

import pytest
import torch

from gaussian_teleport import demo

QUICK = ["--seeds", "0-3", "--sampler", "euler", "--steps", "4", "--quiet"]


def refused(capsys, argv):
    """Run the demo, expect the argparse-style exit 2, return its stderr."""
    with pytest.raises(SystemExit) as stop:
        demo.main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def no_sampling(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("sampled before refusing")

    monkeypatch.setattr(demo, "run_sampler", fail)


def without_pillow(monkeypatch):
    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no pillow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)


@pytest.mark.parametrize("name", ["notes.txt", "keep.safetensors", "keep.png"])
def test_an_existing_file_is_never_replaced_unasked(tmp_path, capsys, no_sampling, name):
    target = tmp_path / name
    target.write_bytes(b"precious")
    err = refused(capsys, QUICK + ["--out", str(target)])
    assert target.read_bytes() == b"precious"
    assert ("already exists: give --overwrite" in err) if name.endswith(".png") else ("not an image file name" in err)


def test_overwrite_replaces_an_existing_image(tmp_path):
    target = tmp_path / "old.png"
    target.write_bytes(b"precious")
    demo.main(QUICK + ["--out", str(target), "--overwrite"])
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_pillow_only_png_is_offered_and_nothing_is_written(tmp_path, capsys, monkeypatch, no_sampling):
    without_pillow(monkeypatch)
    for name in ("x.jpg", "notes.txt"):
        err = refused(capsys, QUICK + ["--out", str(tmp_path / name)])
        assert "end it in .png (.jpg needs pillow)" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out, message", [
    ("no/such/x.png", "the folder of --out 'no/such/x.png' does not exist"),
    (".", "not an image file name"),
])
def test_the_output_is_checked_before_the_model_loads(tmp_path, capsys, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "load_reference", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    assert message in refused(capsys, QUICK + ["--out", out])


@pytest.mark.parametrize("args, message", [
    (["--handoff", "bad"], "argument --handoff: hand-off 'bad' must look like 'sigma:5.0'"),
    (["--handoff", "steps:50"], "would replace all 4 steps"),
    (["--seeds", "0"], "give at least 2 seeds"),
    (["--seeds", "9-3"], "seed range '9-3' is empty: write it low-high"),
    (["--seeds", "1,1"], "repeat 1: give each seed once"),
    (["--seeds", "a-b"], "must look like '0-63'"),
    (["--model", "nosuch"], "unknown reference model 'nosuch'; choose one of"),
    (["--model", "missing.safetensors"], "no model weights at missing.safetensors"),
    (["--label", "42"], "label 42 is not a class of model 'digits': give --label 0..9"),
    (["--label", "-1"], "argument --label: got -1; give 0 or more"),
    (["--cfg", "nan"], "argument --cfg: got nan; the guidance scale must be a finite number"),
    (["--steps", "0"], "argument --steps: got 0; give 1 or more"),
    (["--steps", "-3"], "argument --steps: got -3; give 1 or more"),
    (["--cols", "0"], "argument --cols: got 0; give 1 or more"),
    (["--scale", "0"], "argument --scale: got 0; give 1 or more"),
    (["--model", "patches", "--label", "2"], "unconditional: drop --label"),
])
def test_input_errors_name_the_problem_before_sampling(tmp_path, capsys, no_sampling, args, message):
    err = refused(capsys, QUICK + ["--out", str(tmp_path / "x.png")] + args)
    assert message in err, err
    assert not (tmp_path / "x.png").exists()


def test_a_pickle_named_safetensors_is_named_without_a_traceback(tmp_path):
    import pickle

    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    done = subprocess.run([sys.executable, "-m", "gaussian_teleport.demo", "--model", str(fake), "--out",
                           str(tmp_path / "x.png"), "--quiet"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"python -m gaussian_teleport.demo: error: {fake} is not a safetensors file (a pickle, .pt/.ckpt renamed, or "
        "a damaged download?); reference weights are only read from safetensors files written by "
        "gaussian_teleport.reference.train (or give digits or patches)"]


def test_every_option_shows_its_default():
    for action in demo.build_parser()._actions:
        if action.option_strings != ["-h", "--help"]:
            assert action.help and "default" in action.help, action.option_strings


def test_the_grid_carries_its_labels_with_pillow():
    pytest.importorskip("PIL")
    plain, tele = torch.full((4, 1, 8, 8), -1.0), torch.full((4, 1, 8, 8), 1.0)
    grid = demo.side_by_side(demo.to_uint8_grid(plain, 2, 4), demo.to_uint8_grid(tele, 2, 4))
    image = demo.comparison_image(plain, tele, 2, 4)
    band = image.shape[0] - grid.shape[0]
    assert band > 8 and image.shape[1:] == grid.shape[1:] and torch.equal(image[band:], grid)
    half = grid.shape[1] // 2
    assert int(image[:band, :half].min()) < 128 and int(image[:band, half:].min()) < 128   # "plain", "teleport"


def test_without_pillow_the_grid_is_unlabelled(monkeypatch):
    without_pillow(monkeypatch)
    plain = torch.zeros(4, 1, 8, 8)
    assert torch.equal(demo.comparison_image(plain, plain, 2, 1),
                       demo.side_by_side(demo.to_uint8_grid(plain, 2, 1), demo.to_uint8_grid(plain, 2, 1)))
