"""Gaussian Teleport: replace the first, high-noise sampling steps with one closed-form jump.

This file is ComfyUI's entry point for the package. Importing it needs no host: the ComfyUI nodes
are imported only when ComfyUI asks for them through ``comfy_entrypoint``.
"""

__version__ = "0.1.0"


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entry

    return await entry()
