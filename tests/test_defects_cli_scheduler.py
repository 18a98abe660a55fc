"""Issue 19, items 2 and 12: the calibration command refuses ordinary mistakes in one line, before the work."""

import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from gaussian_teleport.moments import estimate_moments, save_moments
from gaussian_teleport.scheduler.__main__ import main, parser


def refused(capsys, *args):
    """Exit status 2 (argparse's own or the command's one-line error); returns stderr."""
    try:
        code = main(["calibrate", *args])
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    return capsys.readouterr().err


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A module of module:function models next to a moments file for their 1×4×4 latents."""
    data = torch.randn(200, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    save_moments(estimate_moments([data], "dense"), tmp_path / "m.safetensors")
    (tmp_path / "teleport_test_models.py").write_text(textwrap.dedent("""
        import torch

        def good():
            return (lambda x, sigma, **kw: x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)), (1, 4, 4), "ve"

        def nan():
            return (lambda x, sigma, **kw: x * float("nan")), (1, 4, 4), "ve"

        def bad_param():
            return (lambda x, sigma, **kw: x), (1, 4, 4), "vee"

        def bad_shape():
            return (lambda x, sigma, **kw: x), (4, 4), "ve"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return str(tmp_path / "m.safetensors")


@pytest.mark.parametrize("args, message", [
    (["--steps", "1"], "argument --steps: got 1; calibration needs at least 2 steps"),
    (["--steps", "-4"], "argument --steps: got -4; calibration needs at least 2 steps"),
    (["--samples", "0"], "argument --samples: got 0; calibration needs at least 2 noise samples"),
    (["--samples", "-1"], "argument --samples: got -1; calibration needs at least 2 noise samples"),
    (["--schedule", "karras", "--sigma-min", "0"],
     "argument --sigma-min: got 0; sigma-min must be a finite number > 0"),
    (["--schedule", "karras", "--sigma-min", "-1"],           # was "… complex64"
     "argument --sigma-min: got -1; sigma-min must be a finite number > 0"),
    (["--schedule", "karras", "--sigma-min", "20"], "--sigma-min 20 must be below --sigma-max 14.6146"),
    (["--schedule", "flow", "--shift", "-1"], "argument --shift: got -1; shift must be a finite number > 0"),
    (["--cfg", "nan", "--label", "3"], "argument --cfg: got nan; the guidance scale must be a finite number"),
    (["--tolerance", "0"], "argument --tolerance: got 0; the tolerance must be a finite number > 0"),
    (["--mean", "modle"], "argument --mean: invalid choice: 'modle'"),
    (["--label", "42"], "label 42 is not a class of model 'digits': give --label 0..9"),
])
def test_reference_model_settings_are_refused(capsys, args, message):
    err = refused(capsys, "--model", "digits", *args)
    assert message in err, err


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule_xyz:fn", "module 'nosuchmodule_xyz' cannot be imported (No module named 'nosuchmodule_xyz'); give "
                            "module:function of a module Python finds"),
    ("os:nosuchfn", "module 'os' has no function 'nosuchfn'"),
    ("os:getcwd", "getcwd() must return (model, latent_shape, parameterization), got str"),
    ("teleport_test_models:bad_shape", "a latent shape (C, H, W); got (function, (4, 4), 've')"),
    ("teleport_test_models:bad_param", "parameterization must be one of"),
])
def test_module_function_mistakes_are_named(capsys, models, spec, message):
    err = refused(capsys, "--model", spec, "--moments", models)
    assert message in err and err.count("\n") == 1, err


def test_conditioning_flags_are_refused_for_a_module_function_model(capsys, models):
    err = refused(capsys, "--model", "teleport_test_models:good", "--moments", models, "--cfg", "3")
    assert "--label and --cfg condition a reference model" in err


def test_a_nan_model_is_named_by_the_command(capsys, models):
    err = refused(capsys, "--model", "teleport_test_models:nan", "--moments", models, "--schedule", "karras",
                  "--steps", "6")
    assert "error: the model returned NaN or Inf at σ 14.61 (call 1, in 8 of 8 samples)" in err


def test_a_module_function_model_still_calibrates(capsys, models):
    assert main(["calibrate", "--model", "teleport_test_models:good", "--moments", models, "--schedule", "karras",
                 "--steps", "6", "--samples", "4", "--mean", "data"]) == 0
    assert "steps replaced   hand-off σ" in capsys.readouterr().out


def test_a_pickle_named_safetensors_is_one_line_without_a_traceback(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    done = subprocess.run([sys.executable, "-m", "gaussian_teleport.scheduler", "calibrate", "--model", str(fake)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"python -m gaussian_teleport.scheduler calibrate: error: {fake} is not a safetensors file (a pickle, "
        ".pt/.ckpt renamed, or a damaged download?); reference weights are only read from safetensors files written "
        "by gaussian_teleport.reference.train (or give digits or patches)"]


def test_every_option_shows_its_default():
    calibrate = parser()._subparsers._group_actions[0].choices["calibrate"]
    text = " ".join(calibrate.format_help().split())
    options = [a for a in calibrate._actions if a.option_strings != ["-h", "--help"]]
    for action, after in zip(options, options[1:] + [None]):
        start = text.index(action.option_strings[0] + " ", text.index("options:"))
        end = text.index(after.option_strings[0] + " ", start + 1) if after else len(text)
        assert "default" in text[start:end], text[start:end]
