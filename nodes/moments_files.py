"""Moments files in ComfyUI's models/moments folder: the folder itself, Save Moments and Load Moments."""

from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.latest import io

from ..moments.files import EXTENSION, MOMENTS_FOLDER, IF_EXISTS, load_moments, moments_save_path, save_moments
from .widgets import CATEGORY, moments_input, Moments

log = logging.getLogger("gaussian_teleport")


def merge_model_folder(folders: dict, name: str, default_path: str, extensions=(EXTENSION,)):
    """Add ``default_path`` to folder_paths' entry ``name`` in place, keeping any user-declared paths.

    A folder declared in extra_model_paths.yaml is loaded before custom nodes; replacing its entry
    would drop the user's paths, so paths and extensions are merged instead.
    """
    if name not in folders:
        folders[name] = ([default_path], set(extensions))
        return folders[name]
    paths, exts = folders[name]
    if default_path not in paths:
        paths.append(default_path)
    if isinstance(exts, set):
        exts.update(extensions)
    elif isinstance(exts, list):
        exts.extend(e for e in extensions if e not in exts)
    else:
        folders[name] = (paths, set(exts) | set(extensions))
    return folders[name]


def register_moments_folder():
    merge_model_folder(folder_paths.folder_names_and_paths, MOMENTS_FOLDER,
                       os.path.join(folder_paths.models_dir, MOMENTS_FOLDER))


def moments_files() -> list[str]:
    return folder_paths.get_filename_list(MOMENTS_FOLDER)


class GaussianTeleportSaveMoments(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportSaveMoments", display_name="Save Moments", category=CATEGORY,
            description="Save moments as .safetensors (with metadata) in the models/moments folder.",
            inputs=[
                moments_input(),
                io.String.Input("filename", default="my_moments", tooltip=(
                    "File name inside models/moments (subfolders with '/'; .safetensors is added). Nothing is ever "
                    "written outside that folder.")),
                io.Combo.Input("if_exists", options=list(IF_EXISTS), default="add number", tooltip=(
                    "When the file exists. add number: save as name_00001 etc. error: stop. overwrite: replace it "
                    "(only when chosen here).")),
                io.Combo.Input("storage", options=["auto", "float32", "float16", "bfloat16"], default="auto",
                               tooltip="Precision of the stored eigenvectors. auto: float16 for large lowrank files "
                                       "(half the size); means and eigenvalues stay float32."),
            ],
            outputs=[], is_output_node=True,
        )

    @classmethod
    def execute(cls, moments, filename, if_exists, storage) -> io.NodeOutput:
        folder = folder_paths.get_folder_paths(MOMENTS_FOLDER)[0]
        path = moments_save_path(folder, filename, if_exists)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_moments(moments, path, dtype=storage, overwrite=(if_exists == "overwrite"))
        log.info("Gaussian Teleport: saved %s to %s", moments.describe(), path)
        name = os.path.relpath(path, folder).replace(os.sep, "/")
        return io.NodeOutput(ui={"text": (f"saved as {name} (refresh the browser page, or press R, to see it in Load "
                                          f"Moments): {moments.describe()}",)})


class GaussianTeleportLoadMoments(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GaussianTeleportLoadMoments", display_name="Load Moments", category=CATEGORY,
            description="Load moments from models/moments (also the folders named 'moments' in extra_model_paths.yaml).",
            inputs=[io.Combo.Input("moments_file", options=moments_files(), tooltip=(
                "A .safetensors moments file in models/moments. After saving a new one, refresh the browser page "
                "(or press R) to list it."))],
            outputs=[Moments.Output(display_name="moments", tooltip="The loaded moments (validated).")],
        )

    @classmethod
    def validate_inputs(cls, moments_file=None):
        if moments_file is not None and moments_file not in moments_files():
            return (f"'{moments_file}' is not in models/moments; put the file there and refresh the page, or pick one "
                    "of the listed files")
        return True

    @classmethod
    def execute(cls, moments_file) -> io.NodeOutput:
        moments = load_moments(folder_paths.get_full_path_or_raise(MOMENTS_FOLDER, moments_file))
        return io.NodeOutput(moments, ui={"text": (moments.describe(),)})


NODES = [GaussianTeleportSaveMoments, GaussianTeleportLoadMoments]
