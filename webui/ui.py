"""The A1111/Forge face: accordion controls, Settings section, X/Y/Z axes and PNG-Info restore.

Every function takes the host modules it needs as arguments, so the logic runs against stand-ins in
tests; gradio is imported only by the functions that build components.
"""

from __future__ import annotations

from dataclasses import replace

from ..moments.files import list_moments_files
from ..scheduler.handoff import KINDS, MODES
from ..scheduler.settings import DEFAULT_MODE, MEANS, check_mean
from .request import (ATTRIBUTE, FROM_MODEL, KEY_CALIBRATION, KEY_HANDOFF, KEY_HIRES_RESULT, KEY_MEAN,
                      KEY_MODE, KEY_MOMENTS, KEY_ORDER, KEY_RESULT, LEGACY_MEAN, NO_MOMENTS, OPTIONS, ORDERS,
                      RequestRefused, TeleportRequest, check_order, parse_handoff, request_from_args)
from .samplers import FROM_MODEL_FOLDER, LAST_CALIBRATION, resolve_moments_file

TITLE = "Gaussian Teleport"
SECTION = ("gaussian_teleport", TITLE)
OVERRIDES = "gaussian_teleport_overrides"     # per-image X/Y/Z values on the processing object
XYZ_HANDOFF = "[Teleport] Hand-off"
XYZ_MOMENTS = "[Teleport] Moments file"
XYZ_MEAN = "[Teleport] Mean"
XYZ_ORDER = "[Gaussian Solver] Order"

HELP = {
    "accordion": "Teleport samplers ('Euler Teleport', …) replace the first, high-noise steps by one closed-form "
                 "jump. Off: they run exactly as their plain sampler. The 'Gaussian Solver' sampler uses the moments "
                 "chosen here at every step (switch on or off) and the order below; it has no hand-off.",
    "moments": f"Gaussian moments of this model family's latents: a .safetensors file in models/moments, or "
               f"'{FROM_MODEL}' (read off the loaded checkpoint once, no images needed; cached per checkpoint and "
               "size).",
    "kind": "sigma: the noise level where the sampler takes over (the same number on every model; flow models use "
            "t = σ/(1+σ)); steps: how many steps the jump replaces; fraction: which share of the steps it replaces.",
    "value": "About 5 for SD1.5/SDXL Karras schedules; lower saves more calls and risks quality. Calibrate measures "
             "it for your settings.",
    "mode": "save: drop the replaced steps (fewer model calls); same_budget: spread the original number of steps "
            "over the rest of the schedule.",
    "mean": "model: prompt-aware, one extra model call reads each image's mean off the model (prompt, CFG, LoRA "
            "included); data: the moments' own mean (ignores the prompt).",
    "calibrate": "Calibrate on the next generation (batch size 2–8): it returns the plain images, measures how much "
                 "teleport would change them from each hand-off and recommends one; then press 'Use'.",
    "order": "Gaussian Solver sampler only: how many of the latest model calls each step's correction is fitted "
             "through (1–4). Higher follows the model more closely at the same steps; 1 is the most robust with "
             "very few steps.",
}


def moments_choices(folder: str) -> list[str]:
    """The dropdown: none, the model itself, and the files (cached model-derived ones are not listed)."""
    files = [f for f in list_moments_files(folder) if not f.startswith(FROM_MODEL_FOLDER + "/")]
    return [NO_MOMENTS, FROM_MODEL, *files]


# ----------------------------------------------------------------------------
# From the controls to the processing object.


INFOTEXT_KEYS = (KEY_HANDOFF, KEY_MOMENTS, KEY_MODE, KEY_MEAN, KEY_RESULT, KEY_HIRES_RESULT, KEY_CALIBRATION, KEY_ORDER)


def clear_infotext(p):
    """Drop this extension's infotext keys from ``p``: each generation writes its own.

    The X/Y/Z script runs each cell on a shallow copy of one processing object, so all cells share one
    ``extra_generation_params`` dict; without this a plain cell after a teleport cell would carry the
    teleport cell's ``Teleport …`` entries.
    """
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        for key in INFOTEXT_KEYS:
            params.pop(key, None)


def attach(p, *args) -> TeleportRequest:
    """The request from the accordion's values (the API's args), with any X/Y/Z values for this image, on ``p``.

    Callers that pass the first five values only (older API clients) get the Settings default mean; those
    that pass no eighth value (the Gaussian Solver's order) get the default order. The extension's infotext
    keys an earlier generation left on ``p`` are cleared first (see ``clear_infotext``). Values it cannot use
    put a ``RequestRefused`` on ``p`` and raise it: the host swallows what process() raises, so the teleport
    samplers and the Gaussian Solver raise it again and the request fails with its reason.
    """
    clear_infotext(p)
    try:
        if len(args) < 5:
            raise RequestRefused(f"Gaussian Teleport cannot run this request: it got {len(args)} accordion values "
                                 "and needs at least 5 (API: alwayson_scripts 'Gaussian Teleport' args = [switch, "
                                 "moments, unit, value, schedule, mean, calibrate, order]). The request is refused "
                                 "rather than run with other settings")
        request = request_from_args(*args[:8])
    except RequestRefused as exc:
        setattr(p, ATTRIBUTE, exc)
        raise
    for field, override in getattr(p, OVERRIDES, {}).items():
        request = replace(request, **{field: override}) if field in ("moments", "order") else request.with_settings(
            **{field: override})
    setattr(p, ATTRIBUTE, request)
    return request


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
        "mode": lambda d: None if handoff(d) is None else d.get(KEY_MODE, DEFAULT_MODE),
        "mean": lambda d: None if handoff(d) is None else d.get(KEY_MEAN, LEGACY_MEAN),
        "calibrate": lambda d: None if KEY_HANDOFF not in d else False,
        "order": lambda d: None if KEY_ORDER not in d else check_order(d[KEY_ORDER]),
    }


def last_calibration():
    """(unit, value, message) of the last calibration's recommendation, for the accordion's 'Use' button."""
    if not LAST_CALIBRATION:
        return None, None, "No calibration yet: tick Calibrate, generate a batch of 2–8 images, then press Use."
    handoff = LAST_CALIBRATION["handoff"]
    if handoff is None:
        return None, None, LAST_CALIBRATION["summary"]
    return handoff.kind, handoff.value, LAST_CALIBRATION["summary"]


# ----------------------------------------------------------------------------
# Components (gradio; A1111 ≥ 1.7 and Forge).


def build_controls(script, defaults: TeleportRequest, folder: str, *, ui_components, ui_common):
    """The accordion; returns the controls in the order ``attach`` takes them."""
    import gradio as gr

    choices = moments_choices(folder)
    s = defaults.settings
    with ui_components.InputAccordion(defaults.enabled, label=TITLE, elem_id=script.elem_id("gaussian_teleport")) \
            as enabled:
        gr.Markdown(HELP["accordion"])
        with ui_components.FormRow():
            moments = gr.Dropdown(label="Moments", choices=choices,
                                  value=defaults.moments if defaults.moments in choices else NO_MOMENTS,
                                  elem_id=script.elem_id("gaussian_teleport_moments"), info=HELP["moments"])
            ui_common.create_refresh_button(moments, lambda: None, lambda: {"choices": moments_choices(folder)},
                                            script.elem_id("gaussian_teleport_moments_refresh"))
        with ui_components.FormRow():
            kind = gr.Dropdown(label="Hand-off unit", choices=list(KINDS), value=s.handoff.kind,
                               elem_id=script.elem_id("gaussian_teleport_kind"), info=HELP["kind"])
            value = gr.Number(label="Hand-off", value=s.handoff.value, minimum=0, step=0.01,
                              elem_id=script.elem_id("gaussian_teleport_value"), info=HELP["value"])
        with ui_components.FormRow():
            mode = gr.Radio(label="Schedule", choices=list(MODES), value=s.mode,
                            elem_id=script.elem_id("gaussian_teleport_mode"), info=HELP["mode"])
            mean = gr.Radio(label="Mean", choices=list(MEANS), value=s.mean,
                            elem_id=script.elem_id("gaussian_teleport_mean"), info=HELP["mean"])
        with ui_components.FormRow():
            calibrate = gr.Checkbox(label="Calibrate on the next generation", value=False,
                                    elem_id=script.elem_id("gaussian_teleport_calibrate"), info=HELP["calibrate"])
            use = gr.Button("Use the last calibration", elem_id=script.elem_id("gaussian_teleport_use"))
        said = gr.Markdown("")
        with ui_components.FormRow():
            order = gr.Slider(label="Gaussian Solver order", minimum=ORDERS[0], maximum=ORDERS[-1], step=1,
                              value=defaults.order, elem_id=script.elem_id("gaussian_teleport_order"),
                              info=HELP["order"])

        def use_last(current_kind, current_value):
            unit, number, message = last_calibration()
            return (unit or current_kind, current_value if number is None else number, message)

        use.click(use_last, inputs=[kind, value], outputs=[kind, value, said])
    controls = {"enabled": enabled, "moments": moments, "kind": kind, "value": value, "mode": mode, "mean": mean,
                "calibrate": calibrate, "order": order}
    readers = infotext_readers()
    script.infotext_fields = [(controls[name], readers[name]) for name in controls]
    script.paste_field_names = [KEY_HANDOFF, KEY_MOMENTS, KEY_MODE, KEY_MEAN, KEY_ORDER]
    return list(controls.values())


def add_settings(shared, folder: str):
    """The Settings section holding the accordion's defaults.

    The accordion reads them when the UI is built (Reload UI after changing them); an API request
    without an ``alwayson_scripts`` entry for this script uses the values read when the server started.
    """
    import gradio as gr

    components = {
        "gaussian_teleport_enabled": (gr.Checkbox, None),
        "gaussian_teleport_moments": (gr.Dropdown, lambda: {"choices": moments_choices(folder)}),
        "gaussian_teleport_handoff_kind": (gr.Radio, {"choices": list(KINDS)}),
        "gaussian_teleport_handoff_value": (gr.Number, None),
        "gaussian_teleport_mode": (gr.Radio, {"choices": list(MODES)}),
        "gaussian_teleport_mean": (gr.Radio, {"choices": list(MEANS)}),
        "gaussian_teleport_keep_loaded": (gr.Checkbox, None),
        "gaussian_teleport_solver_order": (gr.Slider, {"minimum": ORDERS[0], "maximum": ORDERS[-1], "step": 1}),
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


def _confirm_moments(folder):
    """Every file the moments axis names exists in the moments folder, before any image is made."""
    def confirm(p, xs):
        for x in xs:
            name = _check_moments(x)
            if name not in (NO_MOMENTS, FROM_MODEL):
                try:
                    resolve_moments_file(folder, name)
                except Exception as exc:
                    raise type(exc)(f"X/Y/Z '{XYZ_MOMENTS}' value {name!r}: {exc}") from None
    return confirm


def _check_mean(value):
    return check_mean(str(value).strip())


def _confirm_orders(p, xs):
    for x in xs:
        check_order(x)     # raises naming the accepted values before any image is made


def add_xyz_axes(xyz, folder: str) -> list[str]:
    """Add the hand-off, moments, mean and solver-order axes to the X/Y/Z plot module once; returns their labels."""
    axes = [
        xyz.AxisOption(XYZ_HANDOFF, str, _override("handoff", parse_handoff), confirm=_confirm_handoffs),
        xyz.AxisOption(XYZ_MOMENTS, str, _override("moments", _check_moments), confirm=_confirm_moments(folder),
                       choices=lambda: moments_choices(folder)[1:]),
        xyz.AxisOption(XYZ_MEAN, str, _override("mean", _check_mean), choices=lambda: list(MEANS)),
        xyz.AxisOption(XYZ_ORDER, int, _override("order", check_order), confirm=_confirm_orders,
                       choices=lambda: [str(o) for o in ORDERS]),
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
