"""Classic ComfyUI node mappings (INPUT_TYPES / RETURN_TYPES) for hosts without comfy_api.latest."""

from __future__ import annotations

from .definitions import SPECS
from .spec import In, NodeSpec


def classic_input(spec: In):
    opts = {"tooltip": spec.tooltip}
    for key in ("default", "min", "max", "step"):
        if getattr(spec, key) is not None:
            opts[key] = getattr(spec, key)
    if spec.multiline:
        opts["multiline"] = True
    if spec.kind == "COMBO":
        return (list(spec.choices()), opts)
    return (spec.kind, opts)


def classic_node(spec: NodeSpec) -> type:
    def input_types(cls):
        required = {i.name: classic_input(i) for i in spec.inputs if not i.optional}
        optional = {i.name: classic_input(i) for i in spec.inputs if i.optional}
        return {"required": required, "optional": optional}

    def run(self, **kwargs):
        result = spec.run(**kwargs)
        out = {"result": tuple(result.values)}
        if result.text is not None:
            out["ui"] = {"text": [result.text]}
        return out

    return type(spec.node_id, (), {
        "INPUT_TYPES": classmethod(input_types),
        "RETURN_TYPES": tuple(o.kind for o in spec.outputs),
        "RETURN_NAMES": tuple(o.name for o in spec.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in spec.outputs),
        "FUNCTION": "run",
        "CATEGORY": spec.category,
        "DESCRIPTION": spec.description,
        "OUTPUT_NODE": spec.output_node,
        "INPUT_IS_LIST": spec.input_is_list,
        "run": run,
    })


def mappings():
    """(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS); registers the folder and samplers once."""
    from . import host

    host.register_moments_folder()
    host.register_ksampler_variants()
    classes = {s.node_id: classic_node(s) for s in SPECS}
    return classes, {s.node_id: s.display_name for s in SPECS}
