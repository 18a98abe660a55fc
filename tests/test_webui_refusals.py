"""What a user of A1111/Forge meets when a request is wrong or slow (issue 23, items 1–4), against stand-ins:

- values the extension cannot use are refused by the sampler (the host swallows what a script's process()
  raises), naming the control, its API position and the fix, never run with the Settings defaults;
- the switch is a boolean (the JSON string "false" is off, "yes" is refused);
- an X/Y/Z moments value naming a missing file stops the grid before any image;
- the extension's log lines show at the hosts' default log level, once;
- reading moments from the model is its own job in the host's progress state;
- a damaged cache file of moments from the model is read again; the capped-directions warning names no
  control the host lacks; the "no jump" record guesses no cause for plain txt2img.
"""

import logging
import math
import types

import pytest
import torch

from gaussian_teleport.moments import MomentsError
from gaussian_teleport.webui import ESTIMATE_TEXT, XYZ_MOMENTS, RequestRefused, add_xyz_axes, show_log_lines
from test_webui_hosts import load_script
from test_webui_wrapper import SD_SIGMAS, SHAPE, noise_like, run, sd15  # noqa: F401  (sd15 is a fixture)

GOOD = [True, "sd15.safetensors", "sigma", 5.0, "save", "model", False, 3]
# (position, value, words the refusal must contain)
BAD = [
    (5, "prompt", "'prompt'"),
    (3, -1, "-1"),
    (3, "abc", "'abc'"),
    (3, None, "None"),
    (3, math.nan, "nan"),
    (0, "yes", "'yes'"),
    (2, "seconds", "'seconds'"),
    (4, "fast", "'fast'"),
    (6, "no", "'no'"),
    (7, 7, "7"),
]


def bad_args(index, value, kind=None):
    args = list(GOOD)
    args[index] = value
    if kind is not None:
        args[2] = kind
    return args


def p_for(**attrs):
    fields = dict(extra_generation_params={}, is_hr_pass=False, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                  s_noise=1.0)
    return types.SimpleNamespace(**{**fields, **attrs})


def process_as_the_host_does(script, p, args):
    """A1111 and Forge call every script's process() inside try/except and only report what it raises."""
    try:
        script.process(p, *args)
    except Exception as exc:   # noqa: BLE001 (this is what the host does)
        return exc
    return None


@pytest.mark.parametrize("index, value, words", BAD + [(3, 2.5, "2.5"), (3, 1.5, "1.5")])
def test_a_value_it_cannot_use_fails_the_sampler_with_its_own_reason(sd15, index, value, words):
    host, model = sd15
    host.shared.opts.gaussian_teleport_moments = "sd15.safetensors"     # a Settings default exists
    kind = {2.5: "steps", 1.5: "fraction"}.get(value) if index == 3 else None
    args = bad_args(index, value, kind)
    script = load_script().GaussianTeleportScript()
    p = p_for()
    raised = process_as_the_host_does(script, p, args)
    assert isinstance(raised, RequestRefused)
    for name in ("Euler Teleport", "Gaussian Solver"):
        with pytest.raises(RequestRefused) as info:
            run(host, model, name, p, noise_like(SHAPE), SD_SIGMAS)
        message = str(info.value)
        assert f"args[{index}]" in message and words in message and "Send " in message, message
        assert "other settings" in message
    assert "Teleport result" not in p.extra_generation_params


def test_a_plain_sampler_is_not_stopped_by_teleport_values(sd15):
    host, model = sd15
    script = load_script().GaussianTeleportScript()
    p = p_for()
    process_as_the_host_does(script, p, bad_args(5, "prompt"))
    out, _ = run(host, model, "Euler", p, noise_like(SHAPE), SD_SIGMAS)
    assert out.shape == noise_like(SHAPE).shape


def test_too_few_values_are_refused(sd15):
    host, model = sd15
    p = p_for()
    assert isinstance(process_as_the_host_does(load_script().GaussianTeleportScript(), p, [True, "a"]),
                      RequestRefused)
    with pytest.raises(RequestRefused, match="needs at least 5"):
        run(host, model, "Euler Teleport", p, noise_like(SHAPE), SD_SIGMAS)


@pytest.mark.parametrize("switch, on", [(True, True), (False, False), ("false", False), ("False", False),
                                        ("true", True), (1, True), (0, False)])
def test_the_switch_is_a_boolean(sd15, switch, on):
    host, model = sd15
    p = p_for()
    assert process_as_the_host_does(load_script().GaussianTeleportScript(), p, bad_args(0, switch)) is None
    out, _ = run(host, model, "Euler Teleport", p, noise_like(SHAPE), SD_SIGMAS)
    if on:
        assert "steps replaced" in p.extra_generation_params["Teleport result"]
    else:
        plain, _ = run(host, model, "Euler", p_for(), noise_like(SHAPE), SD_SIGMAS)
        assert torch.equal(out, plain) and p.extra_generation_params == {"Teleport": "off"}


def test_the_xyz_moments_axis_refuses_a_missing_file_before_any_image(tmp_path):
    (tmp_path / "sd15.safetensors").write_bytes(b"")

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None):
            self.label, self.confirm = label, confirm

    xyz = types.SimpleNamespace(AxisOption=AxisOption, axis_options=[])
    add_xyz_axes(xyz, str(tmp_path))
    confirm = next(a for a in xyz.axis_options if a.label == XYZ_MOMENTS).confirm
    confirm(None, ["sd15.safetensors", "From the model", "None"])
    with pytest.raises(MomentsError) as info:
        confirm(None, ["sd15.safetensors", "bad/nan.safetensors"])
    assert XYZ_MOMENTS in str(info.value) and "'bad/nan.safetensors' was not found" in str(info.value)


@pytest.fixture
def fresh_logging(monkeypatch):
    """The logging a host has before any --loglevel: no root handler, and this extension's logger untouched."""
    logger = logging.getLogger("gaussian_teleport")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.delenv("SD_WEBUI_LOG_LEVEL", raising=False)
    return logger


def test_log_lines_show_at_the_hosts_default_level_once(fresh_logging, capsys, monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])         # here, after pytest added its own for this phase
    assert show_log_lines(types.SimpleNamespace(loglevel=None))
    assert show_log_lines(None)                               # Reload UI: no second handler
    assert len(fresh_logging.handlers) == 1
    fresh_logging.info("teleport: jumped σ 14.61 → σ 4.5")
    assert capsys.readouterr().out.count("teleport: jumped σ 14.61 → σ 4.5") == 1
    root = logging.StreamHandler()                            # a root handler added later (e.g. basicConfig)
    logging.root.addHandler(root)
    fresh_logging.info("second line")
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("second line") == 1


def test_a_chosen_log_level_is_left_to_the_host(fresh_logging, monkeypatch):
    assert not show_log_lines(types.SimpleNamespace(loglevel="WARNING"))
    monkeypatch.setenv("SD_WEBUI_LOG_LEVEL", "ERROR")
    assert not show_log_lines(None)
    assert fresh_logging.handlers == []


def progress_of(state):
    """What /sdapi/v1/progress reports (A1111's formula)."""
    progress = 0.01 + state.job_no / state.job_count
    if state.sampling_steps > 0:
        progress += 1 / state.job_count * state.sampling_step / state.sampling_steps
    return progress


def test_reading_moments_from_the_model_is_its_own_job(sd15, tmp_path):
    host, model = sd15
    model.sd_checkpoint_info = types.SimpleNamespace(model_name="tiny", shorthash="abc123")
    state = types.SimpleNamespace(job="", job_no=0, job_count=1, sampling_steps=10, sampling_step=0, textinfo=None)
    total = types.SimpleNamespace(_tqdm=None, totals=[])
    total.updateTotal = total.totals.append
    host.shared.state, host.shared.total_tqdm = state, total
    seen = []
    make = model.make_denoiser

    def make_denoiser():
        denoiser = make()
        inner = denoiser.__call__

        class Recording(type(denoiser)):
            def __call__(self, x, sigma, **extra):
                seen.append((state.job, state.textinfo, state.sampling_step, state.sampling_steps, state.job_no,
                             state.job_count, progress_of(state)))
                return inner(x, sigma, **extra)
        denoiser.__class__ = Recording
        return denoiser

    model.make_denoiser = make_denoiser
    p = p_for()
    process_as_the_host_does(load_script().GaussianTeleportScript(), p, bad_args(1, "From the model"))
    run(host, model, "Euler Teleport", p, noise_like(SHAPE), SD_SIGMAS)
    estimate = [s for s in seen if s[0] == ESTIMATE_TEXT]
    steps = [s[2] for s in estimate]                          # the model calls of one probe call share a step
    assert {s[3] for s in estimate} == {7} and steps == sorted(steps) and set(steps) == set(range(7))
    assert all(s[1] == ESTIMATE_TEXT and s[5] == 2 and s[4] == 0 for s in estimate)
    after = seen[len(estimate):]
    assert after and all(s[0] == "" and s[3] == 10 and s[4] == 1 and s[5] == 2 for s in after)
    progress = [s[6] for s in seen]
    assert progress == sorted(progress)                       # never goes back
    assert total.totals == [10]                               # the console total counts sampling steps only
    assert (state.sampling_steps, state.textinfo, state.job) == (10, None, "")


def test_a_damaged_cache_of_moments_from_the_model_is_read_again(sd15, tmp_path, caplog):
    host, model = sd15
    model.sd_checkpoint_info = types.SimpleNamespace(model_name="tiny", shorthash="abc123")
    cached = tmp_path / "models" / "moments" / "from_model" / "tiny-abc123-4x2x2.safetensors"
    p = p_for()
    process_as_the_host_does(load_script().GaussianTeleportScript(), p, bad_args(1, "From the model"))
    first, _ = run(host, model, "Euler Teleport", p, noise_like(SHAPE), SD_SIGMAS)
    whole = cached.read_bytes()
    cached.write_bytes(whole[: len(whole) // 2])               # an interrupted write, a full disk
    with caplog.at_level(logging.WARNING, logger="gaussian_teleport"):
        again, _ = run(host, model, "Euler Teleport", p, noise_like(SHAPE), SD_SIGMAS)
    assert "reading them from the model again" in caplog.text and "download" not in caplog.text
    torch.testing.assert_close(again, first)
    assert cached.stat().st_size == len(whole)


def test_the_capped_directions_warning_names_no_missing_control(tmp_path, caplog):
    from gaussian_teleport.webui.samplers import CAPPED_ADVICE, model_moments

    def identity(x, sigma, **extra):    # an untrained model: its Jacobian is 1 = 1/α everywhere
        return x.clone()

    sd_model = types.SimpleNamespace(sd_checkpoint_info=types.SimpleNamespace(model_name="id", shorthash="0"))
    x = torch.zeros(1, *SHAPE, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="gaussian_teleport"):
        try:
            model_moments(identity, x, {}, sd_model, "ve", "SD15", str(tmp_path))
        except MomentsError:
            pass                        # it may also find no variance at all; the warning comes first
    assert "reached 1/α" in caplog.text, caplog.text
    assert CAPPED_ADVICE in caplog.text and "Read the moments at a higher sigma" not in caplog.text


@pytest.mark.parametrize("start, words, absent", [
    ({}, "the schedule starts below the hand-off; a hand-off below σ 14.61 jumps", "img2img"),
    ({"init_images": ["image"]}, "img2img or hires fix", "short schedule"),
])
def test_the_no_jump_record_says_what_is_known(sd15, start, words, absent):
    host, model = sd15
    p = p_for(**start)
    process_as_the_host_does(load_script().GaussianTeleportScript(), p, bad_args(3, 20))
    run(host, model, "Euler Teleport", p, noise_like(SHAPE), SD_SIGMAS)
    result = p.extra_generation_params["Teleport result"]
    assert result.startswith("no jump (hand-off σ 20 ≥ schedule start σ 14.61") and words in result, result
    assert absent not in result
