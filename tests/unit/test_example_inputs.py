"""The pack's example inputs reach ComfyUI's input folder without replacing a user's file."""

from __future__ import annotations

import importlib.util

from testsupport import REPO_ROOT


def _examples_module():
    # nodes/examples.py needs no ComfyUI when given a folder; load it alone (nodes/ imports comfy_api)
    spec = importlib.util.spec_from_file_location("ws_examples", REPO_ROOT / "nodes" / "examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_inputs_are_copied_once_and_never_replace_a_file(tmp_path):
    ex = _examples_module()
    names = ex.example_input_files()
    assert "worldstereo_kitchen.png" in names and "worldstereo_panorama.jpg" in names
    assert (REPO_ROOT / "example_inputs" / "NOTICE").is_file()
    users = tmp_path / names[0]
    users.write_bytes(b"the user's own file")
    copied = ex.install_example_inputs(str(tmp_path))
    assert copied == names[1:]
    assert users.read_bytes() == b"the user's own file"
    for name in names[1:]:
        assert (tmp_path / name).read_bytes() == (REPO_ROOT / "example_inputs" / name).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary file left
    assert ex.install_example_inputs(str(tmp_path)) == []  # a second load copies nothing


def test_example_panorama_is_a_small_equirectangular_image():
    from PIL import Image

    path = REPO_ROOT / "example_inputs" / "worldstereo_panorama.jpg"
    with Image.open(path) as im:
        assert im.width == 2 * im.height
    assert path.stat().st_size < 1_000_000
