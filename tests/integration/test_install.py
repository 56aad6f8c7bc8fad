"""Both ways of installing: the folder in custom_nodes (see the server fixture) and pip."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from testsupport import REPO_ROOT, write_room_cloud_and_camera


def _share_installed_torch(site_packages: Path, shelf: Path) -> list[str]:
    """Make this environment's torch, with exactly its dependency closure, importable in a fresh
    virtual environment (symlinks on a shelf named by a .pth file), so pip sees torch as installed.

    Installing torch for real copies its wheel and the CUDA wheels it pulls in (about 6 GB, most of
    the suite's time). Everything else the pack declares is still installed by pip from nothing.
    Returns the names of the shared distributions."""
    shelf.mkdir()
    todo, seen, shared = [("torch", frozenset())], set(), []
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement this environment lacks
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((req.name, frozenset(req.extras)))
        shared.append(dist.metadata["Name"])
        for top in {f.parts[0] for f in dist.files or []}:
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            source = Path(dist.locate_file(top))
            if source.exists() and not (shelf / top).exists():
                (shelf / top).symlink_to(source)
    (site_packages / "shared_torch.pth").write_text(f"{shelf}\n")
    return shared


def test_pip_install_gives_the_library_without_comfyui(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-compile",
            "--disable-pip-version-check",
            "-q",
            "--target",
            str(target),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    installed = {p.name for p in target.iterdir()}
    assert "worldstereo_core" in installed
    # the pack's nodes/ must never become a top-level package: it would shadow ComfyUI's nodes.py
    assert "nodes" not in installed and "tests" not in installed and "scripts" not in installed
    probe = (
        "import sys, worldstereo_core, worldstereo_core.cameras, worldstereo_core.models, "
        "worldstereo_core.recon; assert 'comfy' not in sys.modules and 'comfy_api' not in sys.modules; "
        "print(worldstereo_core.__file__, worldstereo_core.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path, version = out.split()
    assert path.startswith(str(target))
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert version == meta["project"]["version"]


def test_pyproject_registry_fields():
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    major, minor, patch = project["version"].split(".")
    assert all(x.isdigit() for x in (major, minor, patch))
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"]
    assert "web" not in comfy, "WEB_DIRECTORY in __init__.py serves web/; [tool.comfy] web would load it twice"
    # runtime requirements for the custom_nodes install match the package's dependencies
    req = {
        line.split(">=")[0].strip()
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    deps = {d.split(">=")[0].strip() for d in project["dependencies"]} - {"torch"}
    assert req == deps


def test_clean_venv_install_with_real_dependencies_runs_the_cli(tmp_path):
    """``pip install .`` into an empty virtual environment pulls every runtime dependency the
    library imports; then ``worldstereo render`` reads a PLY and a camera.json and writes an MP4.
    (torch, itself a declared dependency, is this environment's own, shared with its dependency
    closure; the rest comes from the registry.)"""
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert any(Requirement(d).name == "torch" for d in meta["project"]["dependencies"])
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    shared = _share_installed_torch(Path(site), tmp_path / "shared")
    # nothing of the pack's own dependencies rides along with torch
    assert not {canonicalize_name(n) for n in shared} & {
        canonicalize_name(Requirement(d).name)
        for d in meta["project"]["dependencies"]
        if Requirement(d).name != "torch"
    }, shared
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run = subprocess.run(pip + [str(REPO_ROOT)], check=False, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (
        "shared/torch"
        in subprocess.run(
            [str(py), "-c", "import torch; print(torch.__file__)"], check=True, capture_output=True, text=True
        ).stdout
    )

    write_room_cloud_and_camera(tmp_path)
    cli = subprocess.run(
        [
            str(venv / "bin" / "worldstereo"),
            "render",
            str(tmp_path / "c.ply"),
            str(tmp_path / "camera.json"),
            str(tmp_path / "r.mp4"),
            "--mask-out",
            str(tmp_path / "m.mp4"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert (tmp_path / "r.mp4").stat().st_size > 0 and (tmp_path / "m.mp4").stat().st_size > 0
    # every module of the library imports with only the declared dependencies installed
    probe = (
        "import pkgutil, importlib, worldstereo_core as w;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(w.__path__, 'worldstereo_core.') if not m.name.endswith('__main__')];"
        "print('ok')"
    )
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
