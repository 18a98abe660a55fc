"""Accordion, Settings section, X/Y/Z axes and PNG-Info restore, against gradio and host stand-ins."""

import contextlib
import copy
import sys
import types

import pytest

from gaussian_teleport.scheduler import Handoff
from gaussian_teleport.webui import (OPTIONS, XYZ_HANDOFF, XYZ_MEAN, XYZ_MOMENTS, XYZ_ORDER, TeleportRequest,
                                     add_settings, add_xyz_axes, attach, build_controls, find_xyz_module,
                                     infotext_readers, request_from_infotext)
from test_webui_hosts import Opts, OptionInfo


class Component:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.value = kwargs.get("value", args[0] if args else None)


@pytest.fixture
def gradio(monkeypatch):
    gr = types.ModuleType("gradio")
    for name in ("Checkbox", "Dropdown", "Number", "Radio", "Markdown", "Slider"):
        setattr(gr, name, type(name, (Component,), {}))

    class Button(Component):
        def click(self, fn, inputs=None, outputs=None):
            self.handler = (fn, inputs, outputs)

    gr.Button = Button
    monkeypatch.setitem(sys.modules, "gradio", gr)
    return gr


class InputAccordion(Component):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def ui_modules():
    refresh = []
    ui_components = types.SimpleNamespace(InputAccordion=InputAccordion, FormRow=contextlib.nullcontext)
    ui_common = types.SimpleNamespace(create_refresh_button=lambda *a: refresh.append(a))
    return ui_components, ui_common, refresh


class Script:
    infotext_fields = None
    paste_field_names = None

    def elem_id(self, item_id):
        return "txt2img_script_" + item_id


def test_controls_default_from_settings_and_list_files(gradio, tmp_path):
    folder = tmp_path / "moments"
    (folder / "sdxl").mkdir(parents=True)
    (folder / "from_model").mkdir()
    (folder / "sd15.safetensors").write_bytes(b"")
    (folder / "sdxl" / "b.safetensors").write_bytes(b"")
    (folder / "from_model" / "cached.safetensors").write_bytes(b"")   # the model-derived cache is not a choice
    (folder / "notes.txt").write_text("ignored")
    ui_components, ui_common, refresh = ui_modules()
    defaults = TeleportRequest.from_controls(False, "sdxl/b.safetensors", "steps", 3, "same_budget", "data")
    script = Script()
    controls = build_controls(script, defaults, str(folder), ui_components=ui_components, ui_common=ui_common)
    enabled, moments, kind, value, mode, mean, calibrate, order = controls
    assert isinstance(enabled, InputAccordion) and enabled.value is False
    assert moments.kwargs["choices"] == ["None", "From the model", "sd15.safetensors", "sdxl/b.safetensors"]
    assert (moments.value, kind.value, value.value, mode.value, mean.value, calibrate.value) == (
        "sdxl/b.safetensors", "steps", 3.0, "same_budget", "data", False)
    assert order.value == 3 and (order.kwargs["minimum"], order.kwargs["maximum"], order.kwargs["step"]) == (1, 4, 1)
    assert value.kwargs["step"] == 0.01                                    # fractions below 1 are typeable
    (component, _, refreshed_args, _), = refresh
    (folder / "new.safetensors").write_bytes(b"")
    assert component is moments and "new.safetensors" in refreshed_args()["choices"]
    assert [c for c, _ in script.infotext_fields] == controls
    assert script.paste_field_names == ["Teleport", "Teleport moments", "Teleport mode", "Teleport mean",
                                        "Gaussian solver order"]


def test_the_use_button_fills_in_the_last_calibration(gradio, tmp_path, monkeypatch):
    ui_components, ui_common, _ = ui_modules()
    # the button is wired as click(fn, inputs=[kind, value], outputs=[kind, value, message]); find it
    built = {}
    original = gradio.Button.click

    def click(self, fn, inputs=None, outputs=None):
        built["fn"] = fn
        return original(self, fn, inputs, outputs)

    monkeypatch.setattr(gradio.Button, "click", click)
    build_controls(Script(), TeleportRequest(), str(tmp_path), ui_components=ui_components, ui_common=ui_common)
    monkeypatch.setattr("gaussian_teleport.webui.ui.LAST_CALIBRATION", {})
    kind, value, message = built["fn"]("sigma", 5.0)
    assert (kind, value) == ("sigma", 5.0) and "No calibration yet" in message
    monkeypatch.setattr("gaussian_teleport.webui.ui.LAST_CALIBRATION",
                        {"handoff": Handoff("sigma", 3.465), "summary": "hand-off σ 3.465: 6 of 20 steps replaced"})
    assert built["fn"]("steps", 4) == ("sigma", 3.465, "hand-off σ 3.465: 6 of 20 steps replaced")


def test_missing_default_file_falls_back_to_none(gradio, tmp_path):
    ui_components, ui_common, _ = ui_modules()
    defaults = TeleportRequest.from_controls(True, "deleted.safetensors", "sigma", 5, "save")
    controls = build_controls(Script(), defaults, str(tmp_path), ui_components=ui_components, ui_common=ui_common)
    assert controls[1].value == "None"


@pytest.mark.parametrize("request_", [
    TeleportRequest.from_controls(True, "sd15.safetensors", "sigma", 4.5, "save", "model"),
    TeleportRequest.from_controls(True, "x/y.safetensors", "fraction", 0.25, "same_budget", "data"),
    TeleportRequest.from_controls(True, "From the model", "steps", 4, "save", "model"),
])
def test_infotext_round_trip(request_):
    params = {k: str(v) for k, v in request_.infotext().items()}   # infotext values are text
    readers = infotext_readers()
    restored = {name: read(params) for name, read in readers.items()}
    assert TeleportRequest.from_controls(**restored) == request_
    assert request_from_infotext(params, TeleportRequest()) == request_


def test_an_image_made_before_the_mean_option_restores_the_data_mean():
    old = {"Teleport": "sigma:5", "Teleport moments": "sd15.safetensors"}
    assert infotext_readers()["mean"](old) == "data"
    assert request_from_infotext(old, TeleportRequest()).settings.mean == "data"


def test_infotext_without_teleport_leaves_controls_alone():
    readers = infotext_readers()
    assert all(read({"Steps": "20"}) is None for read in readers.values())
    off = {"Teleport": "off"}
    assert readers["enabled"](off) is False and readers["kind"](off) is None
    assert request_from_infotext(off, TeleportRequest()).enabled is False
    assert request_from_infotext({"Steps": "20"}, TeleportRequest()) is None


def test_settings_section(gradio):
    shared = types.SimpleNamespace(opts=Opts(data_labels={}), OptionInfo=OptionInfo)
    add_settings(shared, "/nowhere")
    assert set(shared.opts.data_labels) == set(OPTIONS)
    assert {info.section for info in shared.opts.data_labels.values()} == {("gaussian_teleport", "Gaussian Teleport")}
    assert TeleportRequest.from_options(shared.opts) == TeleportRequest()
    shared.opts.gaussian_teleport_handoff_kind = "steps"
    shared.opts.gaussian_teleport_handoff_value = 4
    shared.opts.gaussian_teleport_mean = "data"
    request = TeleportRequest.from_options(shared.opts)
    assert str(request.settings.handoff) == "steps:4" and request.settings.mean == "data"
    shared.opts.gaussian_teleport_mode = "fast"
    with pytest.raises(ValueError, match="schedule mode"):
        TeleportRequest.from_options(shared.opts)


class AxisOption:
    """Same constructor as scripts/xyz_grid.py's AxisOption."""

    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
        self.confirm, self.cost, self.choices, self.prepare = confirm, cost, choices, prepare


def test_xyz_axes(tmp_path):
    xyz = types.SimpleNamespace(AxisOption=AxisOption, axis_options=[AxisOption("Seed", int, None)])
    add_xyz_axes(xyz, str(tmp_path))
    add_xyz_axes(xyz, str(tmp_path))                      # Reload UI
    labels = [a.label for a in xyz.axis_options]
    assert labels == ["Seed", XYZ_HANDOFF, XYZ_MOMENTS, XYZ_MEAN, XYZ_ORDER]
    handoff, moments, mean, _ = xyz.axis_options[1:]
    handoff.confirm(None, ["sigma:3", "6", "steps:2", "fraction:0.2"])
    with pytest.raises(ValueError, match="'sigma:5'"):
        handoff.confirm(None, ["sigma:3", "soon"])
    (tmp_path / "a.safetensors").write_bytes(b"")
    assert moments.choices() == ["From the model", "a.safetensors"] and mean.choices() == ["data", "model"]

    base = types.SimpleNamespace()
    cells = []
    for x, m in (("sigma:3", "data"), ("steps:2", "model")):      # X/Y/Z copies p for every cell
        pc = copy.copy(base)
        handoff.apply(pc, handoff.type(x), None)
        moments.apply(pc, "a.safetensors", None)
        mean.apply(pc, m, None)
        cells.append(attach(pc, True, "None", "sigma", 5, "save", "model"))  # the script's process() runs after
    assert [str(s.settings.handoff) for s in cells] == ["sigma:3", "steps:2"]
    assert [s.settings.mean for s in cells] == ["data", "model"]
    assert {s.moments for s in cells} == {"a.safetensors"}
    assert not hasattr(base, "gaussian_teleport_overrides")
    with pytest.raises(ValueError, match="mean must be one of"):
        mean.apply(copy.copy(base), "prompt", None)


def test_find_xyz_module():
    xyz = types.ModuleType("xyz_grid.py")
    script_class = type("Script", (), {"__module__": "xyz_grid.py"})
    other = types.SimpleNamespace(script_class=type("S", (), {"__module__": "other.py"}), module=None)
    scripts = types.SimpleNamespace(scripts_data=[other, types.SimpleNamespace(script_class=script_class,
                                                                               module=xyz)])
    assert find_xyz_module(scripts) is xyz
    assert find_xyz_module(types.SimpleNamespace(scripts_data=[other])) is None
