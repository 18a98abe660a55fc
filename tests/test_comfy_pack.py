"""What `comfy node pack` ships (git-tracked files minus .comfyignore) loads in a real ComfyUI on its own.

The file list needs a git checkout; loading it needs GT_COMFYUI_PATH (run with ComfyUI's Python, see
comfy_harness.py). The load runs in a subprocess, so the copy never meets the repository's own modules.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

import comfy_harness as ch

DEVELOPMENT = ("tests/", "bench/", "reference/", ".ci/", "webui/", "scripts/", "pipelines/", "demo.py")
NEEDED = ("__init__.py", "_isolation.py", "nodes/__init__.py", "moments/base.py", "scheduler/teleport.py",
          "pyproject.toml", "README.md", "LICENSE", "install.py", "example_workflows/moments_from_model.json")


def ignore_patterns():
    with open(os.path.join(ch.REPO, ".comfyignore")) as fh:
        patterns = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
    # this test matches the simple forms only: an anchored file or folder
    assert all(p.startswith("/") and "*" not in p and "!" not in p for p in patterns), patterns
    return [p[1:] for p in patterns]


def packed_files():
    if not os.path.isdir(os.path.join(ch.REPO, ".git")) or shutil.which("git") is None:
        pytest.skip("needs a git checkout (comfy node pack packs git-tracked files)")
    # tracked files, and the new ones a commit would add (untracked, not ignored)
    listed = subprocess.run(["git", "-C", ch.REPO, "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True)
    patterns = ignore_patterns()
    return [f for f in sorted(set(listed.stdout.splitlines())) if os.path.isfile(os.path.join(ch.REPO, f))
            and not any(f == p or (p.endswith("/") and f.startswith(p)) for p in patterns)]


def test_the_pack_holds_what_a_comfyui_user_installs():
    files = packed_files()
    assert not [f for f in files if f.startswith(DEVELOPMENT)], "development files in the pack"
    assert all(f in files for f in NEEDED), [f for f in NEEDED if f not in files]
    size = sum(os.path.getsize(os.path.join(ch.REPO, f)) for f in files)
    assert size < 2_000_000, size


def test_the_pack_alone_loads_its_nodes_in_comfyui(tmp_path):
    ch.require_comfy()
    pack = tmp_path / "custom_nodes" / "gaussian_teleport"
    for f in packed_files():
        (pack / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ch.REPO, f), pack / f)
    script = (
        "import asyncio, json, sys\n"
        f"sys.path.insert(0, {ch.comfy_path()!r})\n"
        "from comfy.cli_args import args\n"
        "args.cpu = True\n"
        "import nodes\n"
        f"ok = asyncio.run(nodes.load_custom_node({str(pack)!r}, module_parent='custom_nodes'))\n"
        "print(json.dumps([ok, sorted(n for n in nodes.NODE_CLASS_MAPPINGS if n.startswith('GaussianTeleport'))]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    ok, names = json.loads(out.stdout.strip().splitlines()[-1])
    assert ok and len(names) == 11, (names, out.stderr[-4000:])
