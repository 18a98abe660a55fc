"""Installs what the extension needs and the host lacks (safetensors, numpy; torch comes with the host).

AUTOMATIC1111/Forge run this file with their folder on PYTHONPATH: their ``launch`` helpers install
(and honour --skip-install and a custom index URL). ComfyUI-Manager runs it without them: pip then.
"""

import importlib.util
import subprocess
import sys

# import name -> pip requirement
REQUIREMENTS = {"safetensors": "safetensors>=0.4", "numpy": "numpy"}


def host_launch():
    """The webui's launch module, or None outside A1111/Forge."""
    try:
        import launch
    except ImportError:
        return None
    return launch if hasattr(launch, "is_installed") and hasattr(launch, "run_pip") else None


def missing(is_installed) -> list:
    return [req for name, req in REQUIREMENTS.items() if not is_installed(name)]


def pip_install(requirement: str):
    subprocess.check_call([sys.executable, "-m", "pip", "install", requirement])


def main(launch=None):
    launch = launch if launch is not None else host_launch()
    if importlib.util.find_spec("torch") is None:
        print("Gaussian Teleport needs PyTorch, which the host normally provides; install the host's torch first.")
    if launch is not None:
        for req in missing(launch.is_installed):
            launch.run_pip(f'install "{req}"', f"{req} for Gaussian Teleport")
    else:
        for req in missing(lambda name: importlib.util.find_spec(name) is not None):
            pip_install(req)


if __name__ == "__main__":
    main()
