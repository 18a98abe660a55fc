"""The pack in ComfyUI's own frontend, driven in a real headless Chromium through Playwright.

Skipped unless GT_COMFYUI_PATH names a ComfyUI checkout (run with ComfyUI's Python, as test_comfy_http.py),
Playwright imports, and a Chromium binary is found (GT_CHROMIUM, else ``chromium`` or ``chromium-browser`` on
PATH; Playwright's own browser download is not needed). The server is the tiny CPU one of test_comfy_http.py.

Some behaviour exists only in the frontend: it adds a "control after generate" widget (default "randomize") to
every INT input named ``seed`` unless the input says otherwise, and runs it after every Queue.
"""

import json
import os
import shutil
import time

import pytest

import comfy_harness as ch
from test_comfy_http import STUB, Server, tiny_models

EXAMPLES = os.path.join(ch.REPO, "example_workflows")


def chromium_binary():
    for path in (os.environ.get("GT_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and os.path.isfile(path):
            return path
    return None


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    ch.require_comfy()
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    exe = chromium_binary()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set GT_CHROMIUM)")
    base = str(tmp_path_factory.mktemp("comfy_browser"))
    tiny_models(base)
    nodes_dir = os.path.join(base, "custom_nodes")
    os.makedirs(os.path.join(nodes_dir, "gt_test_stub"))
    os.symlink(ch.REPO, os.path.join(nodes_dir, "gaussian_teleport"))
    with open(os.path.join(nodes_dir, "gt_test_stub", "__init__.py"), "w") as fh:
        fh.write(STUB)
    srv = Server(base, os.path.join(base, "server.log"))
    try:
        srv.info = srv.wait_ready()
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(srv.url)
                page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
                yield page, srv
            finally:
                browser.close()
    finally:
        srv.stop()


def widgets(page, node_id):
    """[(name, value)] of a node's widgets as the frontend built them."""
    return page.evaluate("(id) => app.graph.getNodeById(id).widgets.map(w => [w.name, w.value])", node_id)


def load(page, workflow, timeout=60):
    """Load a UI-format workflow and wait until the frontend turns it into a prompt with all its nodes."""
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    wanted = sum(1 for n in workflow["nodes"] if n.get("mode", 0) == 0)
    end = time.time() + timeout
    while page.evaluate("async () => Object.keys((await app.graphToPrompt()).output).length") < wanted:
        assert time.time() < end, "the frontend did not build the workflow's prompt"
        time.sleep(0.5)


def wait_for_runs(srv, count, timeout=240):
    """Wait until the server's history holds ``count`` finished prompts."""
    end = time.time() + timeout
    while time.time() < end:
        history = srv.get("/history")
        if sum(1 for h in history.values() if h.get("status", {}).get("completed") is not None) >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{count} run(s) did not finish:\n" + srv.output())


def estimate_workflow(seed):
    """UI format: tiny MMDiT → Estimate Moments (Model) → Save Moments, runnable on the test server."""
    return {
        "last_node_id": 4, "last_link_id": 3, "version": 0.4, "config": {}, "extra": {}, "groups": [],
        "nodes": [
            {"id": 1, "type": "UNETLoader", "pos": [0, 0], "size": [300, 90], "flags": {}, "order": 0, "mode": 0,
             "inputs": [], "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1], "slot_index": 0}],
             "properties": {}, "widgets_values": ["tiny_mmdit.safetensors", "default"]},
            {"id": 2, "type": "GTTestEmptyConditioning", "pos": [0, 150], "size": [300, 60], "flags": {}, "order": 1,
             "mode": 0, "inputs": [],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [2], "slot_index": 0}],
             "properties": {}, "widgets_values": [4]},
            {"id": 3, "type": "GaussianTeleportEstimateMomentsModel", "pos": [350, 0], "size": [320, 250],
             "flags": {}, "order": 2, "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                        {"name": "conditioning", "type": "CONDITIONING", "link": 2}],
             "outputs": [{"name": "moments", "type": "GAUSSIAN_MOMENTS", "links": [3], "slot_index": 0}],
             "properties": {}, "widgets_values": [64, 64, "stationary", 8, 10.0, "unconditional", seed]},
            {"id": 4, "type": "GaussianTeleportSaveMoments", "pos": [720, 0], "size": [300, 110], "flags": {},
             "order": 3, "mode": 0, "inputs": [{"name": "moments", "type": "GAUSSIAN_MOMENTS", "link": 3}],
             "outputs": [], "properties": {}, "widgets_values": ["browser_probe", "overwrite", "auto"]},
        ],
        "links": [[1, 1, 0, 3, 0, "MODEL"], [2, 2, 0, 3, 1, "CONDITIONING"], [3, 3, 0, 4, 0, "GAUSSIAN_MOMENTS"]],
    }


def test_the_probe_seed_stays_fixed_across_queues(browser_page):
    """Estimate Moments (Model)'s seed gets no randomizing control in the UI, so a second Queue re-uses the
    estimate instead of reading the model again with other noise."""
    page, srv = browser_page
    load(page, estimate_workflow(seed=123))
    names = dict(widgets(page, 3))
    assert names["seed"] == 123 and "control_after_generate" not in names, names
    for done in (1, 2):
        page.evaluate("async () => { await app.queuePrompt(0, 1); }")
        wait_for_runs(srv, done)
        assert dict(widgets(page, 3))["seed"] == 123
    runs = list(srv.get("/history").values())
    assert len(runs) == 2 and all(r["prompt"][2]["3"]["inputs"]["seed"] == 123 for r in runs)
    assert all(r["status"]["status_str"] == "success" for r in runs), [r["status"] for r in runs]


def test_the_example_workflows_load_with_the_stored_seeds(browser_page):
    """Every example loads with its stored widget values in place (no widget the stored list leaves out)."""
    page, _ = browser_page
    for name in sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".json")):
        with open(os.path.join(EXAMPLES, name)) as fh:
            wf = json.load(fh)
        load(page, wf)
        for node in wf["nodes"]:
            if not node["type"].startswith("GaussianTeleport") or "widgets_values" not in node:
                continue
            got = widgets(page, node["id"])
            assert [v for _, v in got] == node["widgets_values"], (name, node["type"], got)
            assert all(n != "control_after_generate" for n, _ in got), (name, node["type"])
