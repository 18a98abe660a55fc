"""Issue 19, items 1, 12 and 14 (demo): the demo's output file, its input errors and the labels in its image."""

import builtins
import json
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

from gaussian_teleport import demo
from gaussian_teleport.reference import load_reference

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


@pytest.mark.parametrize("name", ["notes.txt", "keep.safetensors", "keep.png", "keep.jpg"])
def test_an_existing_file_is_never_replaced_unasked(tmp_path, capsys, no_sampling, name):
    target = tmp_path / name
    target.write_bytes(b"precious")
    err = refused(capsys, QUICK + ["--out", str(target)])
    assert target.read_bytes() == b"precious"
    if name.endswith(".jpg"):
        pytest.importorskip("PIL")      # without pillow .jpg is refused as a name (the test below)
    image = name.endswith((".png", ".jpg"))
    assert ("already exists: give --overwrite" in err) if image else ("not an image file name" in err)


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


@pytest.mark.parametrize("config, message", [
    ("[" * 50_000 + "]" * 50_000, "its config metadata is damaged"),        # was a RecursionError
    ("{not json", "its config metadata is damaged"),                        # was the parser's words, no file
    ('{"nope": 1}', "its config metadata is damaged"),                      # was a TypeError
    ("[1, 2]", "its config metadata is damaged"),
    (None, "its weights do not match the model its config describes"),     # was a RuntimeError
])
def test_a_damaged_weights_file_is_named_before_sampling(tmp_path, capsys, no_sampling, config, message):
    if config is None:      # a sound config over tensors that are not the model's
        config = json.dumps(asdict(load_reference("digits").model.cfg))
    path = tmp_path / "damaged.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "gaussian_teleport.reference", "config": config})
    err = refused(capsys, QUICK + ["--model", str(path), "--out", str(tmp_path / "x.png")])
    assert f"error: {path}" in err and message in err and err.count("\n") == 1, err


def test_every_option_shows_its_default():
    for action in demo.build_parser()._actions:
        if action.option_strings != ["-h", "--help"]:
            assert action.help and "default" in action.help, action.option_strings


@pytest.mark.parametrize("pillow", [True, False], ids=["pillow", "no-pillow"])
def test_the_grid_carries_its_labels_in_the_image(monkeypatch, pillow):
    """Each grid sits under a white band with its label drawn in black, the same with or without pillow."""
    if not pillow:
        without_pillow(monkeypatch)
    plain, tele = torch.full((4, 1, 8, 8), -1.0), torch.full((4, 1, 8, 8), 1.0)
    left, right = demo.to_uint8_grid(plain, 2, 4), demo.to_uint8_grid(tele, 2, 4)
    image = demo.comparison_image(plain, tele, 2, 4, labels=("plain, 35 calls", "teleport, 20 calls"))
    px, margin = 2, 2                                      # scale 4 draws each font pixel as 2 × 2
    band = 7 * px + 2 * margin
    for text, grid, x in (("plain, 35 calls", left, 0), ("teleport, 20 calls", right, None)):
        ink = demo.text_bitmap(text, px)
        x = image.shape[1] - max(grid.shape[1], ink.shape[1] + 2 * margin) if x is None else x
        drawn = image[margin:margin + ink.shape[0], x + margin:x + margin + ink.shape[1]]
        assert torch.equal(drawn.amax(-1) == 0, ink), text   # exactly the label's pixels are black
        assert torch.equal(image[band:band + grid.shape[0], x:x + grid.shape[1]], grid)


def test_the_caption_font_draws_the_letters_it_is_given():
    one = demo.text_bitmap("l", 1)
    assert one.shape == (7, 6) and one[:, 5].sum() == 0 and one[6, 1:4].all()   # an l with its foot, then a gap
    assert not torch.equal(demo.text_bitmap("plain", 1), demo.text_bitmap("qlain", 1))
    assert demo.text_bitmap("ab", 3).shape == (21, 36)
    with pytest.raises(ValueError, match="caption font has no"):
        demo.text_bitmap("é", 1)
