"""The A1111/Forge face: accordion controls, Settings section, X/Y/Z axes and PNG-Info restore.

Every function takes the host modules it needs as arguments, so the logic runs against stand-ins in
tests; gradio is imported only by the functions that build components.
"""

from __future__ import annotations

from dataclasses import replace

from ..scheduler.handoff import KINDS, MODES
from .moments_files import list_moments_files, moments_choices
from .settings import (ATTRIBUTE, KEY_HANDOFF, KEY_MODE, KEY_MOMENTS, NO_MOMENTS, OPTIONS, TeleportSettings,
                       parse_handoff)

TITLE = "Gaussian Teleport"
SECTION = ("gaussian_teleport", TITLE)
OVERRIDES = "gaussian_teleport_overrides"     # per-image X/Y/Z values on the processing object
XYZ_HANDOFF = "[Teleport] Hand-off"
XYZ_MOMENTS = "[Teleport] Moments file"

HELP = {
    "accordion": "Teleport samplers ('Euler Teleport', …) replace the first, high-noise steps by one "
                 "closed-form jump. Off: they run exactly as their plain sampler.",
    "moments": "Gaussian moments of this model family's latents (a .safetensors file in models/moments).",
    "kind": "sigma: noise level where the sampler takes over (VE units; flow models use t = σ/(1+σ)); "
            "steps: how many steps the jump replaces; fraction: which share of the steps it replaces.",
    "value": "About 5 for SD1.5/SDXL Karras schedules; lower saves more calls and risks quality.",
    "mode": "save: drop the replaced steps (fewer model calls); same_budget: spread the original number "
            "of steps over the rest of the schedule.",
}


# ----------------------------------------------------------------------------
# From the controls to the processing object.


def attach(p, enabled, moments, kind, value, mode) -> TeleportSettings:
    """Settings from the accordion's values, with any X/Y/Z values for this image, stored on ``p``."""
    settings = TeleportSettings.from_controls(enabled, moments, kind, value, mode)
    for field, override in getattr(p, OVERRIDES, {}).items():
        settings = replace(settings, **{field: override})
    setattr(p, ATTRIBUTE, settings)
    return settings


def infotext_readers() -> dict:
    """Per control, how to read its value back from an image's parameters (None: leave it)."""
    def handoff(d):
        text = d.get(KEY_HANDOFF)
        return None if text in (None, "off") else parse_handoff(text)

    return {
        "enabled": lambda d: None if KEY_HANDOFF not in d else d[KEY_HANDOFF] != "off",
        "moments": lambda d: d.get(KEY_MOMENTS),
        "kind": lambda d: None if handoff(d) is None else handoff(d).kind,
        "value": lambda d: None if handoff(d) is None else handoff(d).value,
        "mode": lambda d: None if handoff(d) is None else d.get(KEY_MODE, "save"),
    }


# ----------------------------------------------------------------------------
# Components (gradio; A1111 ≥ 1.7 and Forge).


def build_controls(script, defaults: TeleportSettings, folder: str, *, ui_components, ui_common):
    """The accordion; returns the controls in the order ``attach`` takes them."""
    import gradio as gr

    choices = moments_choices(folder)
    accordion_id = script.elem_id("gaussian_teleport")
    with ui_components.InputAccordion(defaults.enabled, label=TITLE, elem_id=accordion_id) as enabled:
        gr.Markdown(HELP["accordion"])
        with ui_components.FormRow():
            moments = gr.Dropdown(label="Moments file", choices=choices,
                                  value=defaults.moments if defaults.moments in choices else NO_MOMENTS,
                                  elem_id=script.elem_id("gaussian_teleport_moments"), info=HELP["moments"])
            ui_common.create_refresh_button(moments, lambda: None, lambda: {"choices": moments_choices(folder)},
                                            script.elem_id("gaussian_teleport_moments_refresh"))
        with ui_components.FormRow():
            kind = gr.Dropdown(label="Hand-off unit", choices=list(KINDS), value=defaults.handoff.kind,
                               elem_id=script.elem_id("gaussian_teleport_kind"), info=HELP["kind"])
            value = gr.Number(label="Hand-off", value=defaults.handoff.value, minimum=0,
                              elem_id=script.elem_id("gaussian_teleport_value"), info=HELP["value"])
            mode = gr.Radio(label="Schedule", choices=list(MODES), value=defaults.mode,
                            elem_id=script.elem_id("gaussian_teleport_mode"), info=HELP["mode"])
    controls = {"enabled": enabled, "moments": moments, "kind": kind, "value": value, "mode": mode}
    readers = infotext_readers()
    script.infotext_fields = [(controls[name], readers[name]) for name in controls]
    script.paste_field_names = [KEY_HANDOFF, KEY_MOMENTS, KEY_MODE]
    return list(controls.values())


def add_settings(shared, folder: str):
    """The Settings section holding the accordion's defaults."""
    import gradio as gr

    components = {
        "gaussian_teleport_enabled": (gr.Checkbox, None),
        "gaussian_teleport_moments": (gr.Dropdown, lambda: {"choices": moments_choices(folder)}),
        "gaussian_teleport_handoff_kind": (gr.Radio, {"choices": list(KINDS)}),
        "gaussian_teleport_handoff_value": (gr.Number, None),
        "gaussian_teleport_mode": (gr.Radio, {"choices": list(MODES)}),
        "gaussian_teleport_keep_loaded": (gr.Checkbox, None),
    }
    for key, (default, label) in OPTIONS.items():
        component, args = components[key]
        info = shared.OptionInfo(default, label, component, args, section=SECTION)
        if key == "gaussian_teleport_moments":
            info.refresh = lambda: None   # the list is rebuilt by the args callable
        shared.opts.add_option(key, info)


# ----------------------------------------------------------------------------
# X/Y/Z plot axes.


def _override(field, parse):
    def apply(p, x, xs):
        setattr(p, OVERRIDES, {**getattr(p, OVERRIDES, {}), field: parse(x)})
    return apply


def _confirm_handoffs(p, xs):
    for x in xs:
        parse_handoff(x)   # raises with the accepted forms before any image is made


def _check_moments(name):
    return NO_MOMENTS if str(name).strip() in ("", NO_MOMENTS) else str(name).strip()


def add_xyz_axes(xyz, folder: str) -> list[str]:
    """Add the hand-off and moments-file axes to the X/Y/Z plot module once; returns their labels."""
    axes = [
        xyz.AxisOption(XYZ_HANDOFF, str, _override("handoff", parse_handoff), confirm=_confirm_handoffs),
        xyz.AxisOption(XYZ_MOMENTS, str, _override("moments", _check_moments),
                       choices=lambda: list_moments_files(folder)),
    ]
    present = {opt.label for opt in xyz.axis_options}
    xyz.axis_options.extend(axis for axis in axes if axis.label not in present)
    return [axis.label for axis in axes]


def find_xyz_module(scripts):
    """The loaded X/Y/Z plot script module (A1111 loads scripts/xyz_grid.py under 'xyz_grid.py')."""
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "xyz_grid") and hasattr(data, "module"):
            return data.module
    return None
