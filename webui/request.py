"""What one A1111/Forge generation asks of the teleport samplers, and how it is written to and read back
from the image's infotext. Host-free: the script fills a request from its controls and attaches it to
the processing object; the teleport settings themselves (hand-off, mode, mean) are the core's. The
Gaussian Solver sampler reads the moments and its order from the same request."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..scheduler.handoff import KINDS, MODES, Handoff
from ..scheduler.settings import DEFAULT_HANDOFF, DEFAULT_MEAN, DEFAULT_MODE, MEANS, TeleportSettings, check_mean
from ..scheduler.solver import check_options

NO_MOMENTS = "None"
FROM_MODEL = "From the model"      # moments read off the loaded checkpoint, computed once and cached as a file

# Infotext keys (generation parameters written under the image).
KEY_HANDOFF = "Teleport"            # "sigma:5", or "off" when a teleport sampler ran with the switch off
KEY_MOMENTS = "Teleport moments"
KEY_MODE = "Teleport mode"          # written only when not "save"
KEY_MEAN = "Teleport mean"          # "model" or "data"; absent in images made before the option existed
LEGACY_MEAN = "data"                # what those images jumped with
KEY_RESULT = "Teleport result"      # what the first pass did
KEY_HIRES_RESULT = "Hires teleport result"
KEY_CALIBRATION = "Teleport calibration"
KEY_ORDER = "Gaussian solver order"  # written by the Gaussian Solver sampler, with KEY_MOMENTS

DEFAULT_ORDER = 3                   # the Gaussian solver's order (the core's default)
ORDERS = (1, 2, 3, 4)

ATTRIBUTE = "gaussian_teleport"     # where the request rides on the processing object p

# Settings section: option key -> (default, label). The UI module turns these into host options.
OPTIONS = {
    "gaussian_teleport_enabled": (True, "Teleport samplers jump by default (the accordion's switch)"),
    "gaussian_teleport_moments": (NO_MOMENTS, "Default moments file"),
    "gaussian_teleport_handoff_kind": (DEFAULT_HANDOFF.kind, "Default hand-off unit"),
    "gaussian_teleport_handoff_value": (DEFAULT_HANDOFF.value, "Default hand-off value"),
    "gaussian_teleport_mode": (DEFAULT_MODE, "Default schedule mode"),
    "gaussian_teleport_mean": (DEFAULT_MEAN, "Default mean (model: prompt-aware, one extra model call)"),
    "gaussian_teleport_keep_loaded": (True, "Keep the last moments file in memory between generations"),
    "gaussian_teleport_solver_order": (DEFAULT_ORDER, "Default order of the Gaussian Solver sampler (1–4)"),
}


def check_switch(value, what: str = "the switch") -> bool:
    """A boolean control's value: True/False (Python's or numpy's), 0/1, or the text 'true'/'false' (any case).

    Anything else is refused rather than read by truthiness (the JSON string "false" is not on)."""
    if type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{what} must be true or false, got {value!r}")


def check_order(order) -> int:
    """The Gaussian solver's order as a whole number from 1 to 4 (text and 3.0 accepted); ValueError otherwise."""
    value = order
    if isinstance(order, str):
        value = order.strip()
        value = int(value) if value.isdigit() else value
    elif isinstance(order, float) and order.is_integer():
        value = int(order)
    check_options(value, "noise", "log", "data")
    return value


@dataclass(frozen=True)
class TeleportRequest:
    """The accordion's values for one generation (the API's ``alwayson_scripts`` args, in this order)."""

    enabled: bool = True
    moments: str = NO_MOMENTS
    settings: TeleportSettings = field(default_factory=TeleportSettings)
    calibrate: bool = False
    order: int = DEFAULT_ORDER          # the Gaussian Solver sampler's; teleport samplers ignore it

    @classmethod
    def from_controls(cls, enabled, moments, kind, value, mode, mean=DEFAULT_MEAN, calibrate=False,
                      order=None) -> "TeleportRequest":
        return cls(check_switch(enabled), str(moments or NO_MOMENTS),
                   TeleportSettings.from_values(str(kind), value, str(mode), str(mean or DEFAULT_MEAN)),
                   check_switch(calibrate, "calibrate"), check_order(DEFAULT_ORDER if order is None else order))

    @classmethod
    def from_options(cls, opts) -> "TeleportRequest":
        """The Settings defaults; ``opts`` is the host's shared.opts (or anything with those attributes)."""
        get = lambda key: getattr(opts, key, OPTIONS[key][0])  # noqa: E731
        return cls.from_controls(get("gaussian_teleport_enabled"), get("gaussian_teleport_moments"),
                                 get("gaussian_teleport_handoff_kind"), get("gaussian_teleport_handoff_value"),
                                 get("gaussian_teleport_mode"), get("gaussian_teleport_mean"),
                                 order=get("gaussian_teleport_solver_order"))

    def with_settings(self, **changes) -> "TeleportRequest":
        return replace(self, settings=replace(self.settings, **changes))

    def infotext(self) -> dict:
        """Generation parameters for a run of a teleport sampler (the result is added when it runs)."""
        if not self.enabled:
            return {KEY_HANDOFF: "off"}
        params = {KEY_HANDOFF: str(self.settings.handoff), KEY_MOMENTS: self.moments, KEY_MEAN: self.settings.mean}
        if self.settings.mode != DEFAULT_MODE:
            params[KEY_MODE] = self.settings.mode
        return params

    def solver_infotext(self) -> dict:
        """Generation parameters for a run of the Gaussian Solver sampler (no hand-off: the moments and order)."""
        return {KEY_MOMENTS: self.moments, KEY_ORDER: self.order}


class RequestRefused(ValueError):
    """A generation's accordion values (the API's args) the extension cannot honour.

    The host swallows what a script's process() raises, so the refusal is also kept on the processing
    object and raised again by the teleport samplers and the Gaussian Solver: the request fails with this
    reason instead of running with other settings."""


# The accordion's controls in the order of the API's ``alwayson_scripts`` args: (label, what to send instead).
ARGS = (
    ("switch", "true or false (a JSON boolean)"),
    ("Moments", f"a file name in models/moments, '{FROM_MODEL}' or '{NO_MOMENTS}'"),
    ("Hand-off unit", f"one of {', '.join(KINDS)}"),
    ("Hand-off", "a number: a sigma ≥ 0 such as 5, a whole number of steps, or a fraction from 0 to below 1"),
    ("Schedule", f"one of {', '.join(MODES)}"),
    ("Mean", f"one of {', '.join(MEANS)}"),
    ("Calibrate on the next generation", "true or false (a JSON boolean)"),
    ("Gaussian Solver order", "a whole number from 1 to 4"),
)


def refused(index: int, problem) -> RequestRefused:
    label, fix = ARGS[index]
    return RequestRefused(f"Gaussian Teleport cannot run this request: its {label} value (the accordion's "
                          f"'{label}'; API: alwayson_scripts 'Gaussian Teleport' args[{index}]) is not usable: "
                          f"{problem}. Send {fix}. The request is refused rather than run with other settings")


def request_from_args(enabled, moments, kind, value, mode, mean=None, calibrate=False, order=None) -> TeleportRequest:
    """The request from the accordion's values (the API's args), each checked on its own so a refusal names it.

    A missing (None) mean, calibrate or order is a client that sends fewer values: the defaults apply.
    """
    def check(index, parse, *values):
        try:
            return parse(*values)
        except (TypeError, ValueError) as exc:
            raise refused(index, exc) from None

    def check_moments(name):
        if name is None:
            return NO_MOMENTS
        if not isinstance(name, str):
            raise ValueError(f"the moments must be a file name, got {name!r}")
        return name

    def check_mode(m):
        if m not in MODES:
            raise ValueError(f"teleport schedule mode must be one of {MODES}, got {m!r}")
        return m

    on = check(0, check_switch, enabled)
    moments = check(1, check_moments, moments)
    if kind not in KINDS:
        raise refused(2, f"hand-off unit must be one of {KINDS}, got {kind!r}")
    handoff = check(3, Handoff, kind, value)
    mode = check(4, check_mode, mode)
    mean = check(5, check_mean, OPTIONS["gaussian_teleport_mean"][0] if mean is None else mean)
    calibrate = check(6, check_switch, False if calibrate is None else calibrate, "calibrate")
    order = check(7, check_order, DEFAULT_ORDER if order is None else order)
    return TeleportRequest(on, moments, TeleportSettings(handoff, mode, mean), calibrate, order)


def parse_handoff(text) -> Handoff:
    """'sigma:5', 'steps:4', 'fraction:0.25', or a bare number meaning a sigma."""
    text = str(text).strip()
    if ":" not in text:
        try:
            return Handoff("sigma", float(text))
        except ValueError:
            raise ValueError(f"teleport hand-off {text!r} must be a sigma such as 5, or look like "
                             "'sigma:5', 'steps:4' or 'fraction:0.25'") from None
    return Handoff.parse(text)


def request_from_infotext(params: dict, defaults: TeleportRequest) -> TeleportRequest | None:
    """The request an image was made with, or None if its infotext has no teleport entry.

    Images made before the mean option existed carry no ``Teleport mean``: they jumped with the data's
    mean, so that is what they restore to. An image made by the Gaussian Solver sampler alone (no
    ``Teleport`` entry) restores its moments and order onto ``defaults``.
    """
    text = params.get(KEY_HANDOFF)
    if text is None:
        if KEY_ORDER not in params:
            return None
        return replace(defaults, moments=str(params.get(KEY_MOMENTS, defaults.moments)),
                       order=check_order(params[KEY_ORDER]))
    if str(text).strip() == "off":
        return replace(defaults, enabled=False)
    settings = TeleportSettings(parse_handoff(text), str(params.get(KEY_MODE, DEFAULT_MODE)),
                                str(params.get(KEY_MEAN, LEGACY_MEAN)))
    order = check_order(params[KEY_ORDER]) if KEY_ORDER in params else defaults.order
    return TeleportRequest(True, str(params.get(KEY_MOMENTS, defaults.moments)), settings, order=order)
