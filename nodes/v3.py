"""ComfyUI V3 nodes (comfy_api.latest) built from the descriptions in definitions.py."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io, ui

from .definitions import SPECS
from .spec import In, NodeSpec, Out

_SIMPLE = {"MODEL": io.Model, "VAE": io.Vae, "IMAGE": io.Image, "LATENT": io.Latent, "SAMPLER": io.Sampler,
           "SIGMAS": io.Sigmas, "NOISE": io.Noise, "GUIDER": io.Guider, "STRING": io.String, "FLOAT": io.Float,
           "INT": io.Int, "BOOLEAN": io.Boolean, "COMBO": io.Combo}
_CUSTOM: dict[str, type] = {}


def comfy_type(kind: str):
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind not in _CUSTOM:
        _CUSTOM[kind] = io.Custom(kind)
    return _CUSTOM[kind]


def v3_input(spec: In):
    common = dict(tooltip=spec.tooltip, optional=spec.optional)
    if spec.kind == "COMBO":
        return io.Combo.Input(spec.name, options=spec.choices(), default=spec.default, **common)
    if spec.kind in ("INT", "FLOAT"):
        return comfy_type(spec.kind).Input(spec.name, default=spec.default, min=spec.min, max=spec.max,
                                           step=spec.step, **common)
    if spec.kind == "STRING":
        return io.String.Input(spec.name, default=spec.default, multiline=spec.multiline, **common)
    return comfy_type(spec.kind).Input(spec.name, **common)


def v3_output(spec: Out):
    return comfy_type(spec.kind).Output(display_name=spec.name, tooltip=spec.tooltip)


def v3_node(spec: NodeSpec) -> type[io.ComfyNode]:
    def define_schema(cls):
        return io.Schema(node_id=spec.node_id, display_name=spec.display_name, category=spec.category,
                         description=spec.description, inputs=[v3_input(i) for i in spec.inputs],
                         outputs=[v3_output(o) for o in spec.outputs], is_output_node=spec.output_node,
                         is_input_list=spec.input_is_list)

    def execute(cls, **kwargs):
        result = spec.run(**kwargs)
        shown = None
        if result.images is not None:
            shown = ui.PreviewImage(result.images, cls=cls).as_dict()
            if result.text is not None:
                shown["text"] = (result.text,)
        elif result.text is not None:
            shown = ui.PreviewText(result.text)
        return io.NodeOutput(*result.values, ui=shown)

    return type(spec.node_id, (io.ComfyNode,), {"define_schema": classmethod(define_schema),
                                                "execute": classmethod(execute),
                                                "__doc__": spec.description})


NODES = [v3_node(s) for s in SPECS]


class GaussianTeleportExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> GaussianTeleportExtension:
    # Registration happens here, once per load: ComfyUI's loader does not call on_load for packs.
    from . import host

    host.register_moments_folder()
    host.register_ksampler_variants()
    return GaussianTeleportExtension()
