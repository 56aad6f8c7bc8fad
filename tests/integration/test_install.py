"""Both ways of installing: the folder in custom_nodes (see the server fixture) and pip."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from testsupport import REPO_ROOT


def test_pip_install_gives_the_library_without_comfyui(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-compile",
         "--disable-pip-version-check", "-q", "--target", str(target), str(REPO_ROOT)],
        check=True, capture_output=True, text=True,
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
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         check=True, capture_output=True, text=True).stdout
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
    req = {line.split(">=")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")}
    deps = {d.split(">=")[0].strip() for d in project["dependencies"]} - {"torch"}
    assert req == deps
