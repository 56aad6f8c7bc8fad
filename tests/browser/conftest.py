"""Fixtures that drive the real ComfyUI frontend in headless Chromium (Debian's build)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfy_server import CHROMIUM, CHROMIUM_ARGS, WEBGL_ARGS  # scripts/ is on sys.path: tests/testsupport.py
from testsupport import REPO_ROOT, require_comfyui


def frontends() -> list[tuple[str, Path | None]]:
    """(label, front-end root) pairs: the one ComfyUI 0.3.75 serves, and the newest package."""
    out: list[tuple[str, Path | None]] = [("1.32.9", None)]
    new = os.environ.get("WORLDSTEREO_FRONTEND_NEW")
    if new:
        out.append(("1.58.1", Path(new)))
    return out


@pytest.fixture(scope="session")
def browser():
    require_comfyui()
    if not Path(CHROMIUM).exists():
        msg = f"Chromium not found at {CHROMIUM}; run scripts/setup_env.sh"
        if os.environ.get("WORLDSTEREO_REQUIRE_COMFY") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + WEBGL_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session", params=frontends(), ids=lambda p: f"frontend-{p[0]}")
def ui_server(request):
    """A ComfyUI server serving one frontend version, with the pack installed: this checkout, or
    the one WORLDSTEREO_PACK_SOURCE names (development: a scratch copy with wiring not yet in nodes/)."""
    from comfy_server import ComfyServer

    label, root = request.param
    pack = Path(os.environ.get("WORLDSTEREO_PACK_SOURCE", REPO_ROOT))
    server = ComfyServer(front_end_root=root, pack_source=pack).start()
    server.frontend_label = label
    r = server.post("/api/settings", json={"Comfy.TutorialCompleted": True, "Comfy.Validation.Workflows": True})
    assert r.ok, r.text
    try:
        yield server
    finally:
        server.stop()


class AppPage:
    """The ComfyUI app open in a browser page, with the page errors it raised."""

    def __init__(self, page, server):
        self.page = page
        self.server = server
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def open(self) -> AppPage:
        self.page.goto(self.server.url, wait_until="domcontentloaded")
        self.page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        self.page.wait_for_timeout(500)
        return self

    def load_workflow(self, workflow: dict) -> None:
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
        self.page.wait_for_timeout(1000)

    def body_text(self) -> str:
        return self.page.evaluate("() => document.body.innerText")

    def api_graph(self) -> dict:
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def registered_types(self) -> set[str]:
        return set(self.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))


@pytest.fixture()
def app_page(browser, ui_server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        yield AppPage(page, ui_server).open()
    finally:
        context.close()


@pytest.fixture()
def offline_app_page(browser, ui_server):
    """The app page with clipboard access, whose requests off this machine are aborted (the
    frontend asks model hosts for file sizes; a test never reaches the network)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=ui_server.url)
    context.route(lambda url: not url.startswith(ui_server.url), lambda route: route.abort())
    try:
        yield AppPage(context.new_page(), ui_server).open()
    finally:
        context.close()
