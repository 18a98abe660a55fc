"""Gaussian Teleport: replace the first, high-noise sampling steps with one closed-form jump.

This file is ComfyUI's entry point for the package. Importing it needs no host: the ComfyUI nodes
are imported only when ComfyUI asks for them through ``comfy_entrypoint`` (V3 API). On an older
ComfyUI without the V3 API, classic NODE_CLASS_MAPPINGS are provided instead; elsewhere they are None,
which ComfyUI's loader reads as "use comfy_entrypoint".
"""

__version__ = "0.1.0"


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entry

    return await entry()


def _classic_mappings():
    from .nodes import classic_mappings

    return classic_mappings() or (None, None)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _classic_mappings()
