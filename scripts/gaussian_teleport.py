"""AUTOMATIC1111 / Forge entry point: teleport samplers and the Gaussian Solver in "Sampling method", and their accordion.

The webui loads this file by path. The extension folder is loaded as a package under a private name
(see _isolation.py), so nothing here depends on sys.path; the logic lives in the ``webui`` subpackage.
"""

import importlib
import os
import runpy

from modules import (paths, script_callbacks, scripts, sd_samplers, sd_samplers_common, sd_samplers_kdiffusion,
                     shared, ui_common, ui_components)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
package = runpy.run_path(os.path.join(ROOT, "_isolation.py"))["load_package"](ROOT)
webui = importlib.import_module(package.__name__ + ".webui")

webui.use_host(shared)   # the console shows the extension's log lines; the progress shows its own jobs
settings_source = webui.host_settings_source(shared, paths.models_path)
FOLDER = settings_source()[1]
os.makedirs(FOLDER, exist_ok=True)

# Once per process: Reload UI runs this file again and finds the names already registered.
webui.register_samplers(sd_samplers, sd_samplers_common, sd_samplers_kdiffusion, settings_source)


def add_xyz_axes():
    xyz = webui.find_xyz_module(scripts)
    if xyz is not None:
        webui.add_xyz_axes(xyz, FOLDER)


# The X/Y/Z script (a built-in, loaded before extensions) builds its axis list whenever its UI is made,
# and in API-only mode that happens before any before-UI callback: add the axes now, and again (a no-op
# when present) before the UI, for hosts that load the X/Y/Z script later.
add_xyz_axes()
script_callbacks.on_before_ui(add_xyz_axes)
script_callbacks.on_ui_settings(lambda: webui.add_settings(shared, FOLDER))


class GaussianTeleportScript(scripts.Script):
    sorting_priority = 15

    def title(self):
        return webui.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        defaults = webui.TeleportRequest.from_options(shared.opts)
        return webui.build_controls(self, defaults, FOLDER, ui_components=ui_components, ui_common=ui_common)

    def process(self, p, *args):
        webui.attach(p, *args)
