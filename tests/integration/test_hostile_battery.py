"""Hostile and careless input against a real ComfyUI server (issue 16).

One server for the whole module (tiny weights in the real model folders). Every case asserts
the three promises of the README's troubleshooting section:

1. the server stays up (``/system_stats`` answers after the case);
2. the answer names the problem (an error on the node, a 4xx with a message, never a 500);
3. nothing is left half-written and no earlier output changes (the output, input and model
   folders and a folder outside ComfyUI are snapshotted before and compared after).

Cases: file inputs (traversal, absolute paths, symlinks out of the folders, device files, FIFOs,
annotations), numbers (NaN, inf, huge, negative, non-ASCII digits), malformed files (camera.json,
memory banks, pickles), request bodies (oversize, deeply nested, wrong types), concurrency,
interrupt at every stage of the loop and out-of-memory in the model path (simulated on the CPU
with an address-space limit on the server process).
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import torch

from testsupport import require_comfyui

TOP_SEED = 2**64 - 1  # the seed widgets' maximum
W, H = 96, 64  # small views keep every case well under a second


# --------------------------------------------------------------------------------------------
# the server and the files the cases point at


@dataclass
class Env:
    server: object
    base: Path
    outside: Path  # a folder outside every ComfyUI folder, holding a readable secret

    @property
    def input(self) -> Path:
        return self.base / "input"

    @property
    def output(self) -> Path:
        return self.base / "output"


def _camera_json(n: int = 3, shared_k: bool = False, **extra) -> dict:
    w2c = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    w2c[:, 0, 3] = torch.linspace(0.0, 0.2, n, dtype=torch.float64)
    K = [[80.0, 0.0, W / 2], [0.0, 80.0, H / 2], [0.0, 0.0, 1.0]]
    return {"extrinsic": w2c.tolist(), "intrinsic": K if shared_k else [K] * n, **extra}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    require_comfyui()
    from comfy_server import ComfyServer
    from tiny_models import write_tiny_models
    from worldstereo_core.memory import MemoryBank

    server = ComfyServer()
    write_tiny_models(server.base_dir / "models")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "cam.json").write_text(json.dumps(_camera_json(secret="outside-secret")))
    (outside / "frames.safetensors").write_bytes(b"not yours")
    # every malloc of 64 KiB or more gets a mapping of its own (freed heap is not reused), so the
    # out-of-memory case can cap the server's address space deterministically; this server only
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        server.start()
    finally:
        if saved is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    e = Env(server, server.base_dir, outside)
    inp, out = e.input, e.output
    # camera.json files in the input folder, good and bad
    (inp / "good.json").write_text(json.dumps(_camera_json()))
    (inp / "shared_k.json").write_text(json.dumps(_camera_json(shared_k=True)))
    (inp / "nan.json").write_text(json.dumps(_camera_json()).replace("0.1", "NaN", 1))
    (inp / "deep.json").write_text("[" * 8000 + "]" * 8000)
    (inp / "digits.json").write_text('{"extrinsic": [' + "9" * 5000 + '], "intrinsic": []}')
    (inp / "inf.json").write_text('{"extrinsic": [[1e999]], "intrinsic": []}')
    (inp / "binary.json").write_bytes(os.urandom(64) + b"\xff\xfe")
    (inp / "empty.json").write_text("")
    (inp / "zero_poses.json").write_text(json.dumps({"extrinsic": [], "intrinsic": []}))
    nonrigid = _camera_json()
    nonrigid["extrinsic"][1][0][0] = 3.0
    (inp / "nonrigid.json").write_text(json.dumps(nonrigid))
    (inp / "list.json").write_text("[1, 2, 3]")
    (inp / "mismatch.json").write_text(
        json.dumps({**_camera_json(), "intrinsic": [_camera_json()["intrinsic"][0]] * 2})
    )
    (inp / "adir").mkdir()
    (inp / "link_out.json").symlink_to(outside / "cam.json")
    (inp / "linkdir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(inp / "fifo.json")
    (out / "cam_in_output.json").write_text(json.dumps(_camera_json()))
    # memory banks: a good one, damaged copies, a user folder, a link out of the output folder
    bank = MemoryBank(
        (torch.rand(H, W, 3),),
        torch.eye(4)[None],
        torch.tensor([[[80.0, 0, W / 2], [0, 80.0, H / 2], [0, 0, 1]]]),
        ("input",),
    )
    banks = out / "hostile"
    bank.save(banks / "good")
    for name in ("truncated", "flipped", "count_abc", "pickle", "no_manifest"):
        bank.save(banks / name)
    f = banks / "truncated" / "frames.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    f = banks / "flipped" / "cameras.safetensors"
    data = bytearray(f.read_bytes())
    data[2] ^= 0xFF
    f.write_bytes(bytes(data))
    man = json.loads((banks / "count_abc" / "manifest.json").read_text())
    (banks / "count_abc" / "manifest.json").write_text(json.dumps({**man, "count": "abc"}))
    import pickle

    (banks / "pickle" / "frames.safetensors").write_bytes(pickle.dumps({"frame_00000": [1, 2, 3]}))
    (banks / "no_manifest" / "manifest.json").unlink()
    (banks / "user_notes").mkdir()
    (banks / "user_notes" / "notes.txt").write_text("precious")
    (out / "linkout").symlink_to(outside, target_is_directory=True)
    (e.base / "models" / "linkout").symlink_to(outside, target_is_directory=True)
    (e.base / "models" / "diffusers" / "not_wan").mkdir(parents=True)
    # damaged weights where users put the real ones: a truncated checkpoint, a pickle named
    # .safetensors, random bytes as a MoGe file
    import shutil

    models = e.base / "models"
    broken = models / "worldstereo" / "broken-ckpt"
    shutil.copytree(models / "worldstereo" / "worldstereo-memory-dmd", broken)
    f = broken / "model.safetensors"
    f.write_bytes(f.read_bytes()[:4096])
    (models / "vae" / "pickled_vae.safetensors").write_bytes(pickle.dumps({"decoder.conv_in.weight": [0.0] * 8}))
    (models / "moge" / "garbage").mkdir(parents=True)
    (models / "moge" / "garbage" / "model.safetensors").write_bytes(os.urandom(4096))
    (models / "moge" / "garbage" / "config.json").write_text("{}")
    try:
        yield e
    finally:
        server.stop()


def _snapshot(env: Env) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file and folder under output/, input/, models/ and the outside folder."""
    snap = {}
    for root in (env.output, env.input, env.base / "models", env.outside):
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                snap[str(p)] = (st.st_size if p.is_file() and not p.is_symlink() else 0, st.st_mtime_ns)
    return snap


def _alive(env: Env) -> None:
    r = requests.get(env.server.url + "/system_stats", timeout=10)
    assert r.status_code == 200, "the server did not answer after the case"


def _unchanged(before: dict, after: dict, allowed_new: Callable[[str], bool] = lambda p: False) -> None:
    changed = [p for p in before if p in after and after[p] != before[p] and not os.path.isdir(p)]
    gone = [p for p in before if p not in after]
    new = [p for p in after if p not in before and not allowed_new(p)]
    assert not changed and not gone and not new, {"changed": changed, "gone": gone, "new": new}
    leftovers = [p for p in after if ".tmp" in Path(p).name]
    assert not leftovers, f"temporary files left behind: {leftovers}"


# --------------------------------------------------------------------------------------------
# graphs


def _scene(seed: int = 0) -> dict:
    return {
        "1": {
            "class_type": "WorldStereoSyntheticScene",
            "inputs": {"scene": "room", "seed": seed, "width": W, "height": H},
        }
    }


def trajectory(camera_json: str = "", preset: str = "camera_json", keyframes: str = "", **controls) -> dict:
    inputs = {
        "camera": ["1", 2],
        "preset": preset,
        "median_depth": 1.0,
        "angle": 0.0,
        "extent": 0.0,
        "num_frames": 9,
        "camera_json": camera_json,
        "keyframes": keyframes,
    }
    inputs.update(controls)
    return {
        **_scene(),
        "2": {"class_type": "WorldStereoTrajectoryBuilder", "inputs": inputs},
        "3": {
            "class_type": "WorldStereoSaveCameraJson",
            "inputs": {"trajectory": ["2", 0], "filename_prefix": "hostile/cam"},
        },
    }


def bank_load(folder: str) -> dict:
    return {
        "2": {"class_type": "WorldStereoMemoryBankLoad", "inputs": {"folder": folder}},
        "3": {"class_type": "WorldStereoMemoryBankSave", "inputs": {"bank": ["2", 0], "folder": "hostile/resaved"}},
    }


def bank_save(folder: str) -> dict:
    return {
        **_scene(),
        "2": {
            "class_type": "WorldStereoMemoryBankCreate",
            "inputs": {"images": ["1", 0], "cameras": ["1", 2], "label": "input"},
        },
        "3": {"class_type": "WorldStereoMemoryBankSave", "inputs": {"bank": ["2", 0], "folder": folder}},
    }


def _cloud_nodes() -> dict:
    return {
        **_scene(),
        "2": {
            "class_type": "WorldStereoBuildPointCloud",
            "inputs": {
                "image": ["1", 0],
                "depth": ["1", 1],
                "camera": ["1", 2],
                "fov_degrees": 60.0,
                "remove_depth_edges": True,
                "compress_far_depth": True,
                "max_points": 0,
            },
        },
    }


def save_ply(prefix: str) -> dict:
    return {
        **_cloud_nodes(),
        "3": {"class_type": "WorldStereoSavePointCloud", "inputs": {"cloud": ["2", 0], "filename_prefix": prefix}},
    }


def save_report(report: str, prefix: str = "hostile/report") -> dict:
    return {
        "2": {"class_type": "PrimitiveString", "inputs": {"value": report}},
        "3": {"class_type": "WorldStereoSaveReport", "inputs": {"report": ["2", 0], "filename_prefix": prefix}},
    }


def export(kind: str, prefix: str = "hostile/export", frames_from: str = "1") -> dict:
    node = "WorldStereoSaveColmap" if kind == "colmap" else "WorldStereoSaveTransformsJson"
    inputs = {"frames": [frames_from, 0], "cameras": ["1", 2], "filename_prefix": prefix, "cloud": ["2", 0]}
    if kind == "colmap":
        inputs["max_points"] = 1000
    g = {**_cloud_nodes(), "3": {"class_type": node, "inputs": inputs}}
    g["4"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}}
    return g


def load_model(wan_folder: str, vae: str = "wan_2.1_vae_tiny.safetensors") -> dict:
    return {
        **_scene(),
        "2": {
            "class_type": "WorldStereoLoadModel",
            "inputs": {
                "checkpoint": "worldstereo-memory-dmd",
                "variant": "auto",
                "text_encoder": "umt5_xxl_tiny.safetensors",
                "clip_vision": "clip_vision_h_tiny.safetensors",
                "vae": vae,
                "wan_folder": wan_folder,
                "dtype": "fp32",
                "offload": "none",
                "attention_backend": "default",
            },
        },
        "3": {
            "class_type": "WorldStereoLoadMoGe",
            "inputs": {"model_name": "moge-2-tiny/model.safetensors", "variant": "auto", "dtype": "fp32"},
        },
        "4": {
            "class_type": "WorldStereoSceneLoop",
            "inputs": {
                "model": ["2", 0],
                "image": ["1", 0],
                "camera": ["1", 2],
                "prompt": "a room",
                "negative_prompt": "",
                "trajectories": "orbit,up",
                "sampler": "auto",
                "steps": 1,
                "cfg": 1.0,
                "shift": 0.0,
                "seed": 0,
                "retrieval_mode": "aabb",
                "depth_resolution_level": 0,
                "moge": ["3", 0],
                "depth": ["1", 1],
            },
        },
        "5": {"class_type": "WorldStereoSaveReport", "inputs": {"report": ["4", 6], "filename_prefix": "hostile/loop"}},
    }


# --------------------------------------------------------------------------------------------
# prompt cases: the graph fails at one node (or is refused at /prompt) with a message


@dataclass
class Case:
    id: str
    graph: Callable[[Env], dict]
    expect: tuple[str, ...]  # every one appears in the error message (case-insensitive)
    node: str | None = None  # the node that fails; None: refused by validation (HTTP 400)
    forbid: tuple[str, ...] = ()  # must NOT appear (e.g. what an outside file holds)


OUTSIDE_MSG = ("camera_json", "not inside", "input folder")
NO_PROBE = ("outside-secret", "root:", "parse", "extrinsic")  # nothing read or parsed outside

CASES = [
    # ---- file inputs: camera.json (defect 1) ------------------------------------------------
    Case(
        "cam-traversal",
        lambda e: trajectory("../" + os.path.relpath(e.outside, e.base) + "/cam.json"),
        OUTSIDE_MSG,
        "2",
        NO_PROBE,
    ),
    Case("cam-absolute", lambda e: trajectory(str(e.outside / "cam.json")), OUTSIDE_MSG, "2", NO_PROBE),
    Case("cam-etc-passwd", lambda e: trajectory("/etc/passwd"), OUTSIDE_MSG, "2", NO_PROBE),
    Case("cam-missing-outside", lambda e: trajectory("/nonexistent/dir/cam.json"), OUTSIDE_MSG, "2", NO_PROBE),
    Case("cam-symlink-file-out", lambda e: trajectory("link_out.json"), OUTSIDE_MSG, "2", NO_PROBE),
    Case("cam-symlink-dir-out", lambda e: trajectory("linkdir/cam.json"), OUTSIDE_MSG, "2", NO_PROBE),
    Case("cam-dev-zero", lambda e: trajectory("/dev/zero"), OUTSIDE_MSG, "2", NO_PROBE),
    Case("cam-proc-self", lambda e: trajectory("/proc/self/environ"), OUTSIDE_MSG, "2", NO_PROBE),
    Case("cam-temp-annotation", lambda e: trajectory("x.json [temp]"), OUTSIDE_MSG, "2", NO_PROBE),
    Case("cam-dotdot-annotation", lambda e: trajectory("../../x/cam.json [output]"), ("not inside",), "2", NO_PROBE),
    Case("cam-nul-byte", lambda e: trajectory("good.json\x00.png"), ("camera_json",), "2"),
    Case("cam-empty", lambda e: trajectory("   "), ("camera_json",), "2"),
    Case("cam-folder", lambda e: trajectory("adir"), ("no such file",), "2"),
    Case("cam-fifo", lambda e: trajectory("fifo.json"), ("no such file",), "2"),
    Case("cam-missing-inside", lambda e: trajectory("nope.json"), ("no such file", "input folder"), "2"),
    # ---- malformed camera.json inside the input folder ------------------------------------------
    Case("cam-nan", lambda e: trajectory("nan.json"), ("nan.json", "finite"), "2"),
    Case("cam-deep", lambda e: trajectory("deep.json"), ("deep.json", "nested too deeply"), "2"),
    Case("cam-5000-digits", lambda e: trajectory("digits.json"), ("digits.json", "characters"), "2"),
    Case("cam-inf", lambda e: trajectory("inf.json"), ("inf.json", "float64 range"), "2"),
    Case("cam-binary", lambda e: trajectory("binary.json"), ("binary.json", "utf-8"), "2"),
    Case("cam-empty-file", lambda e: trajectory("empty.json"), ("empty.json", "not valid json"), "2"),
    Case("cam-zero-poses", lambda e: trajectory("zero_poses.json"), ("0 poses",), "2"),
    Case("cam-nonrigid", lambda e: trajectory("nonrigid.json"), ("nonrigid.json", "rotation"), "2"),
    Case("cam-not-object", lambda e: trajectory("list.json"), ("JSON object",), "2"),
    Case("cam-count-mismatch", lambda e: trajectory("mismatch.json"), ("3 extrinsics but 2 intrinsics",), "2"),
    # ---- keyframes JSON ----------------------------------------------------------------------------
    Case(
        "keyframes-deep",
        lambda e: trajectory(preset="keyframes", keyframes="[" * 8000 + "]" * 8000),
        ("keyframes", "nested too deeply"),
        "2",
    ),
    Case(
        "keyframes-nan",
        lambda e: trajectory(preset="keyframes", keyframes='[{"position": [NaN, 0, 0], "look_at": [0, 0, 1]}]'),
        ("keyframes", "finite"),
        "2",
    ),
    Case(
        "keyframes-not-json",
        lambda e: trajectory(preset="keyframes", keyframes="{position: 1"),
        ("keyframes", "not valid json"),
        "2",
    ),
    Case("keyframes-wrong-type", lambda e: trajectory(preset="keyframes", keyframes='"orbit"'), ("keyframe",), "2"),
    # ---- numbers in widgets ----------------------------------------------------------------------
    Case("median-depth-nan", lambda e: trajectory(preset="orbit", median_depth=float("nan")), ("median_depth",), "2"),
    Case("angle-inf", lambda e: trajectory(preset="up", angle=float("inf")), ("angle",), None),
    Case("extent-huge", lambda e: trajectory(preset="orbit", extent=1e308), ("extent",), None),
    Case("num-frames-negative", lambda e: trajectory(preset="orbit", num_frames=-5), ("num_frames",), None),
    Case("num-frames-superscript", lambda e: trajectory(preset="orbit", num_frames="²"), ("num_frames",), None),
    Case("num-frames-5000-digits", lambda e: trajectory(preset="orbit", num_frames="9" * 5000), ("num_frames",), None),
    Case(
        "scene-seed-over-max",
        lambda e: {
            **save_ply("hostile/s"),
            "1": {**_scene()["1"], "inputs": {**_scene()["1"]["inputs"], "seed": 2**31}},
        },
        ("seed",),
        None,
    ),
    Case(
        "loop-seed-over-2-64",
        lambda e: {
            **load_model(""),
            "4": {**load_model("")["4"], "inputs": {**load_model("")["4"]["inputs"], "seed": 2**64}},
        },
        ("seed",),
        None,
    ),
    Case(
        "loop-unknown-trajectory",
        lambda e: {
            **load_model(""),
            "4": {**load_model("")["4"], "inputs": {**load_model("")["4"]["inputs"], "trajectories": "orbit,sideways"}},
        },
        ("sideways",),
        "4",
    ),
    # ---- memory bank folders (load) ------------------------------------------------------------
    Case("bank-load-traversal", lambda e: bank_load("../input"), ("bank folder", "not inside"), "2"),
    Case("bank-load-absolute", lambda e: bank_load(str(e.outside)), ("bank folder", "not inside"), "2", NO_PROBE),
    Case("bank-load-symlink-out", lambda e: bank_load("linkout"), ("bank folder", "not inside"), "2"),
    Case("bank-load-missing", lambda e: bank_load("hostile/nope"), ("no saved",), "2"),
    Case(
        "bank-load-truncated",
        lambda e: bank_load("hostile/truncated"),
        ("truncated", "frames.safetensors", "re-save"),
        "2",
    ),
    Case(
        "bank-load-flipped-byte",
        lambda e: bank_load("hostile/flipped"),
        ("flipped", "cameras.safetensors", "re-save"),
        "2",
    ),
    Case("bank-load-count-abc", lambda e: bank_load("hostile/count_abc"), ("count_abc", "'count'", "re-save"), "2"),
    Case("bank-load-pickle", lambda e: bank_load("hostile/pickle"), ("pickle", "frames.safetensors", "damaged"), "2"),
    Case("bank-load-no-manifest", lambda e: bank_load("hostile/no_manifest"), ("no_manifest", "manifest.json"), "2"),
    Case("bank-load-user-folder", lambda e: bank_load("hostile/user_notes"), ("manifest.json",), "2"),
    # ---- memory bank folders (save) ------------------------------------------------------------
    Case("bank-save-traversal", lambda e: bank_save("../escaped_bank"), ("bank folder", "not inside"), "3"),
    Case("bank-save-absolute", lambda e: bank_save(str(e.outside / "bank")), ("bank folder", "not inside"), "3"),
    Case("bank-save-symlink-out", lambda e: bank_save("linkout/bank"), ("bank folder", "not inside"), "3"),
    Case("bank-save-output-root", lambda e: bank_save("."), ("bank folder", "not inside"), "3"),
    Case("bank-save-over-user-folder", lambda e: bank_save("hostile/user_notes"), ("refusing to replace",), "3"),
    Case("bank-save-empty", lambda e: bank_save(""), ("bank folder",), "3"),
    # ---- damaged weights (pickles are never loaded) ------------------------------------------
    Case(
        "weights-truncated-checkpoint",
        lambda e: {
            **load_model(""),
            "2": {**load_model("")["2"], "inputs": {**load_model("")["2"]["inputs"], "checkpoint": "broken-ckpt"}},
        },
        ("model.safetensors",),
        "2",
    ),
    Case(
        "weights-pickle-as-safetensors",
        lambda e: load_model("", vae="pickled_vae.safetensors"),
        ("pickled_vae.safetensors",),
        "2",
    ),
    Case(
        "weights-random-bytes-moge",
        lambda e: {
            **load_model(""),
            "3": {
                **load_model("")["3"],
                "inputs": {**load_model("")["3"]["inputs"], "model_name": "garbage/model.safetensors"},
            },
        },
        ("model.safetensors",),
        "3",
    ),
    # ---- model folders -------------------------------------------------------------------------
    Case("wan-absolute", lambda e: load_model("/etc"), ("wan_folder", "not inside", "model folders"), "2"),
    Case("wan-traversal", lambda e: load_model("../input"), ("wan_folder", "not inside"), "2"),
    Case("wan-symlink-out", lambda e: load_model("linkout"), ("wan_folder", "not inside"), "2"),
    Case("wan-missing", lambda e: load_model("diffusers/Wan2.1-I2V-14B-480P"), ("wan_folder", "no such folder"), "2"),
    Case("wan-not-a-wan-folder", lambda e: load_model("diffusers/not_wan", vae="from wan_folder"), ("not_wan",), "2"),
    Case(
        "checkpoint-not-listed",
        lambda e: {
            **load_model(""),
            "2": {**load_model("")["2"], "inputs": {**load_model("")["2"]["inputs"], "checkpoint": "../../outside"}},
        },
        ("checkpoint", "not inside"),
        "2",
    ),
    # ---- choices: ComfyUI 0.3.75 does not check V3 combo values, so the nodes do -----------------
    Case(
        "choice-dtype",
        lambda e: {
            **load_model(""),
            "2": {**load_model("")["2"], "inputs": {**load_model("")["2"]["inputs"], "dtype": "fp64"}},
        },
        ("dtype", "fp64"),
        "2",
    ),
    Case(
        "choice-offload",
        lambda e: {
            **load_model(""),
            "2": {**load_model("")["2"], "inputs": {**load_model("")["2"]["inputs"], "offload": "disk"}},
        },
        ("offload", "disk"),
        "2",
    ),
    Case("choice-vae-traversal", lambda e: load_model("", vae="../../../etc/passwd"), ("vae",), "2", NO_PROBE),
    Case(
        "choice-sampler",
        lambda e: {
            **load_model(""),
            "4": {**load_model("")["4"], "inputs": {**load_model("")["4"]["inputs"], "sampler": "euler"}},
        },
        ("sampler", "euler"),
        "4",
    ),
    Case(
        "choice-retrieval-mode",
        lambda e: {
            **load_model(""),
            "4": {**load_model("")["4"], "inputs": {**load_model("")["4"]["inputs"], "retrieval_mode": "nearest"}},
        },
        ("retrieval mode", "nearest"),
        "4",
    ),
    Case(
        "choice-retrieval-mode-oracle",
        lambda e: {
            **_oracle_loop(5),
            "2": {**_oracle_loop(5)["2"], "inputs": {**_oracle_loop(5)["2"]["inputs"], "retrieval_mode": "nearest"}},
        },
        ("retrieval mode", "nearest"),
        "2",
    ),
    Case("choice-preset", lambda e: trajectory(preset="sideways"), ("preset", "sideways"), "2"),
    Case(
        "choice-scene",
        lambda e: {
            **save_ply("hostile/s"),
            "1": {**_scene()["1"], "inputs": {**_scene()["1"]["inputs"], "scene": "castle"}},
        },
        ("scene", "castle"),
        "1",
    ),
    Case(
        "choice-moge-traversal",
        lambda e: {
            **load_model(""),
            "3": {
                **load_model("")["3"],
                "inputs": {**load_model("")["3"]["inputs"], "model_name": "../../../etc/passwd"},
            },
        },
        ("moge",),
        "3",
        NO_PROBE,
    ),
    # ---- output prefixes -----------------------------------------------------------------------
    Case("ply-prefix-traversal", lambda e: save_ply("../../escaped/cloud"), ("filename_prefix", "output folder"), "3"),
    Case(
        "ply-prefix-absolute", lambda e: save_ply(str(e.outside / "cloud")), ("filename_prefix", "output folder"), "3"
    ),
    Case("ply-prefix-symlink-out", lambda e: save_ply("linkout/cloud"), ("filename_prefix", "output folder"), "3"),
    Case("ply-prefix-through-file", lambda e: save_ply("cam_in_output.json/cloud"), ("filename_prefix",), "3"),
    Case("colmap-prefix-symlink-out", lambda e: export("colmap", "linkout/colmap"), ("filename_prefix",), "3"),
    Case("report-prefix-symlink-out", lambda e: save_report('{"a": 1}', "linkout/report"), ("filename_prefix",), "3"),
    # ---- exports with inputs that do not fit (checked before anything is written, defect 5) -------
    Case("colmap-frames-vs-cameras", lambda e: export("colmap", frames_from="4"), ("3",), "3"),
    Case("transforms-frames-vs-cameras", lambda e: export("transforms", frames_from="4"), ("3",), "3"),
    # ---- JSON reports --------------------------------------------------------------------------
    Case("report-not-json", lambda e: save_report("{oops"), ("not valid json",), "3"),
    Case("report-deep", lambda e: save_report("[" * 8000 + "]" * 8000), ("nested too deeply",), "3"),
]


def _message(env: Env, graph: dict, node: str | None) -> str:
    from comfy_server import PromptRejected

    try:
        result = env.server.run(graph, timeout=300)
    except PromptRejected as e:
        assert node is None, f"refused by validation, expected node {node} to fail: {e}"
        assert e.status == 400
        return json.dumps(e.body)
    assert node is not None, f"expected validation to refuse the graph, got {result.status}"
    assert result.status == "error", (result.status, env.server.log()[-3000:])
    err = result.error
    assert err["node_id"] == node, err
    assert err["exception_type"].rsplit(".", 1)[-1] not in (
        "RecursionError",
        "KeyError",
        "TypeError",
        "AttributeError",
        "IndexError",
        "SafetensorError",
        "RuntimeError",
    ), err
    return err["exception_message"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_prompt_case(env, case):
    before = _snapshot(env)
    msg = _message(env, case.graph(env), case.node)
    low = msg.lower()
    for s in case.expect:
        assert s.lower() in low, (s, msg)
    for s in case.forbid:
        assert s.lower() not in low, (s, msg)
    _alive(env)
    _unchanged(before, _snapshot(env))


def test_outside_paths_cannot_be_probed(env):
    """An existing file outside the folders gets the very same answer as a missing one."""
    a = _message(env, trajectory("/etc/passwd"), "2").replace("/etc/passwd", "P")
    b = _message(env, trajectory("/etc/no-such-file"), "2").replace("/etc/no-such-file", "P")
    c = _message(env, trajectory(str(env.outside / "cam.json")), "2").replace(str(env.outside / "cam.json"), "P")
    assert a == b == c


def test_accepted_file_inputs(env):
    """The legitimate counterparts: a file in the input folder, one in the output folder (annotated),
    a shared-intrinsic camera.json (defect 6), a bank saved then loaded; outputs are new files only."""
    from worldstereo_core.trajectory import load_camera_json

    before = _snapshot(env)
    for name, n in (("good.json", 3), ("shared_k.json", 3), ("cam_in_output.json [output]", 3)):
        result = env.server.run(trajectory(name), timeout=300)
        assert result.status == "success", (name, result.error)
        (saved,) = env.server.output_files(result) or [env.output / result.outputs["3"]["text"][0]]
        assert len(load_camera_json(saved)) == n
    result = env.server.run(bank_load("hostile/good"), timeout=300)
    assert result.status == "success", result.error
    _alive(env)
    _unchanged(before, _snapshot(env), allowed_new=lambda p: "/output/hostile/" in p and ".tmp" not in p)


# --------------------------------------------------------------------------------------------
# routes: every malformed request is a 4xx with a message


@pytest.fixture(scope="module")
def tokens(env):
    """Inspector tokens of a Trajectory Builder run (cloud + planner) and of a point cloud."""
    g = {
        **_cloud_nodes(),
        "3": {
            "class_type": "WorldStereoTrajectoryBuilder",
            "inputs": {
                "camera": ["1", 2],
                "preset": "orbit",
                "median_depth": 0.0,
                "angle": 0.0,
                "extent": 0.0,
                "num_frames": 9,
                "camera_json": "",
                "keyframes": "",
                "depth": ["1", 1],
                "cache": ["2", 0],
            },
        },
    }
    g["1"]["inputs"]["seed"] = 7
    result = env.server.run(g, timeout=300)
    assert result.status == "success", result.error
    deadline = time.time() + 20
    outputs = result.outputs
    while "3" not in outputs and time.time() < deadline:
        time.sleep(0.2)
        outputs = env.server.get(f"/history/{result.prompt_id}").json().get(result.prompt_id, {}).get("outputs", {})
    return outputs["3"]["worldstereo_inspector"][0]["token"]


def _render_body(**over) -> dict:
    body = {
        "w2c": torch.eye(4).flatten().tolist(),
        "K": [80.0, 0, W / 2, 0, 80.0, H / 2, 0, 0, 1],
        "height": H,
        "width": W,
    }
    body.update(over)
    return body


def _raw(body: str | bytes) -> dict:
    return {"data": body if isinstance(body, bytes) else body.encode(), "headers": {"Content-Type": "application/json"}}


@dataclass
class RouteCase:
    id: str
    method: str
    path: str  # {t} = the planner token
    kwargs: dict = field(default_factory=dict)
    status: tuple[int, ...] = (400,)
    expect: str = ""


ROUTE_CASES = [
    RouteCase("points-superscript", "GET", "/{t}?points=%C2%B2", expect="points"),
    RouteCase("points-arabic-digits", "GET", "/{t}?points=%D9%A3%D9%A3", expect="points"),
    RouteCase("points-5000-nines", "GET", "/{t}?points=" + "9" * 5000, expect="points"),
    RouteCase("points-zero", "GET", "/{t}?points=0", expect="points"),
    RouteCase("points-negative", "GET", "/{t}?points=-5", expect="points"),
    RouteCase("points-float", "GET", "/{t}?points=1e3", expect="points"),
    RouteCase("points-hex", "GET", "/{t}?points=0x10", expect="points"),
    RouteCase("points-space", "GET", "/{t}?points=%2010", expect="points"),
    RouteCase("points-empty", "GET", "/{t}?points=", expect="points"),
    RouteCase("token-traversal", "GET", "/..%2F..%2Fuser%2Fcomfy.settings.json", status=(404,)),
    RouteCase("token-unknown-render", "POST", "/" + "f" * 32 + "/render", {"json": _render_body()}, (404,)),
    RouteCase("render-nested-8000", "POST", "/{t}/render", _raw("[" * 8000 + "]" * 8000), expect="nested"),
    RouteCase("preset-nested-8000", "POST", "/{t}/preset", _raw("[" * 8000 + "]" * 8000), expect="nested"),
    RouteCase(
        "render-nested-in-key", "POST", "/{t}/render", _raw('{"w2c": ' + "[" * 5000 + "]" * 5000 + "}"), expect="nested"
    ),
    RouteCase("render-oversize", "POST", "/{t}/render", _raw(b" " * 20000 + b"{}"), (413,)),
    RouteCase("render-not-json", "POST", "/{t}/render", _raw("{w2c:"), expect="not valid JSON"),
    RouteCase("render-not-utf8", "POST", "/{t}/render", _raw(b'{"w2c": "\xff"}'), expect="UTF-8"),
    RouteCase("render-array-body", "POST", "/{t}/render", {"json": [1, 2, 3]}, expect="JSON object"),
    RouteCase("render-w2c-string", "POST", "/{t}/render", {"json": _render_body(w2c="eye")}, expect="w2c"),
    RouteCase("render-w2c-short", "POST", "/{t}/render", {"json": _render_body(w2c=[1, 2, 3])}, expect="w2c"),
    RouteCase(
        "render-nan", "POST", "/{t}/render", _raw(json.dumps(_render_body()).replace("1.0", "NaN", 1)), expect="finite"
    ),
    RouteCase(
        "render-inf", "POST", "/{t}/render", _raw(json.dumps(_render_body()).replace("1.0", "1e999", 1)), expect="range"
    ),
    RouteCase(
        "render-huge-int",
        "POST",
        "/{t}/render",
        _raw(json.dumps(_render_body()).replace(f'"height": {H}', '"height": ' + "9" * 5000)),
        expect="characters",
    ),
    RouteCase(
        "render-huge-size",
        "POST",
        "/{t}/render",
        {"json": _render_body(height=10**9, width=10**9)},
        expect="out of range",
    ),
    RouteCase("render-negative-size", "POST", "/{t}/render", {"json": _render_body(height=-64)}, expect="out of range"),
    RouteCase(
        "render-nonrigid", "POST", "/{t}/render", {"json": _render_body(w2c=[3.0] + [0.0] * 14 + [1.0])}, expect="w2c"
    ),
    RouteCase("render-zero-focal", "POST", "/{t}/render", {"json": _render_body(K=[0.0] * 9)}, expect="K"),
    RouteCase("render-radius-bad", "POST", "/{t}/render", {"json": _render_body(radius=-1)}, expect="radius"),
    RouteCase("preset-unknown", "POST", "/{t}/preset", {"json": {"preset": "sideways"}}, expect="unknown preset"),
    RouteCase(
        "preset-num-frames-bool",
        "POST",
        "/{t}/preset",
        {"json": {"preset": "orbit", "num_frames": True}},
        expect="num_frames",
    ),
    RouteCase(
        "preset-num-frames-huge",
        "POST",
        "/{t}/preset",
        {"json": {"preset": "orbit", "num_frames": 10**9}},
        expect="num_frames",
    ),
    RouteCase(
        "preset-angle-string",
        "POST",
        "/{t}/preset",
        {"json": {"preset": "up", "angle": "ninety"}},
        expect="preset request",
    ),
    RouteCase(
        "preset-angle-list", "POST", "/{t}/preset", {"json": {"preset": "up", "angle": [1]}}, expect="preset request"
    ),
    RouteCase(
        "preset-negative-depth",
        "POST",
        "/{t}/preset",
        {"json": {"preset": "up", "median_depth": -1}},
        expect="median_depth",
    ),
    RouteCase("preset-body-null", "POST", "/{t}/preset", _raw("null"), expect="JSON object"),
]


@pytest.mark.parametrize("case", ROUTE_CASES, ids=[c.id for c in ROUTE_CASES])
def test_route_case(env, tokens, case):
    before = _snapshot(env)
    url = env.server.url + "/worldstereo/inspector" + case.path.replace("{t}", tokens)
    r = requests.request(case.method, url, timeout=30, **case.kwargs)
    assert r.status_code in case.status, (r.status_code, r.text[:500])
    if case.expect:
        assert case.expect.lower() in r.text.lower(), r.text[:500]
    _alive(env)
    _unchanged(before, _snapshot(env))


def test_route_without_content_length(env, tokens):
    """A chunked body (no Content-Length) is refused, not read without bound."""

    def chunks():
        yield b'{"preset": '
        yield b'"orbit"}'

    r = requests.post(f"{env.server.url}/worldstereo/inspector/{tokens}/preset", data=chunks(), timeout=30)
    assert r.status_code == 413
    _alive(env)


# --------------------------------------------------------------------------------------------
# concurrency


def test_concurrent_prompts_and_requests_keep_every_bank_whole(env, tokens):
    """Five prompts saving banks to one folder and preset previews, all at once: every prompt
    succeeds, the bank loads, no temporary folder remains, the routes keep answering."""
    from worldstereo_core.memory import MemoryBank

    results, answers = [], []

    def prompt(i):
        g = bank_save("hostile/concurrent")
        g["1"]["inputs"]["seed"] = 100 + i
        results.append(env.server.run(g, timeout=300).status)

    def previews():
        for angle in range(0, 50, 5):
            r = env.server.post(f"/worldstereo/inspector/{tokens}/preset", json={"preset": "up", "angle": float(angle)})
            answers.append(r.status_code)

    threads = [threading.Thread(target=prompt, args=(i,)) for i in range(5)] + [threading.Thread(target=previews)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == ["success"] * 5
    assert set(answers) == {200}
    assert len(MemoryBank.load(env.output / "hostile" / "concurrent")) == 1
    assert not [p for p in (env.output / "hostile").iterdir() if ".tmp" in p.name or ".old" in p.name]
    _alive(env)


# --------------------------------------------------------------------------------------------
# interrupt at every stage of the loop


def _oracle_loop(seed: int) -> dict:
    g = _scene()
    g["2"] = {
        "class_type": "WorldStereoOracleSceneLoop",
        "inputs": {
            "scene": ["1", 3],
            "image": ["1", 0],
            "depth": ["1", 1],
            "camera": ["1", 2],
            "trajectories": "orbit",
            "clip_depth": "exact",
            "retrieval_mode": "aabb",
            "seed": seed,
        },
    }
    g["3"] = {"class_type": "WorldStereoMemoryBankSave", "inputs": {"bank": ["2", 2], "folder": "hostile/loop_bank"}}
    g["4"] = {
        "class_type": "WorldStereoSaveReport",
        "inputs": {"report": ["2", 6], "filename_prefix": "hostile/loop_report"},
    }
    return g


@pytest.fixture(scope="module")
def finished_loop(env):
    """One finished loop: its bank and report are the earlier outputs an interrupt must not touch."""
    result = env.server.run(_oracle_loop(seed=1), timeout=600)
    assert result.status == "success", result.error
    return result


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_interrupt_at_every_stage_of_the_loop(env, finished_loop, stage):
    """The loop has 1 + 5 stages for one trajectory (lift, render, retrieve, generate, depth,
    merge); interrupting after each leaves the server idle and usable, and the earlier run's bank
    and report untouched."""
    before = _snapshot(env)
    sent = []

    def on_event(event):
        d = event.get("data", {})
        if event.get("type") == "progress" and d.get("node") == "2" and d.get("value") == stage and not sent:
            sent.append(True)
            env.server.interrupt()

    result = env.server.run(_oracle_loop(seed=10 + stage), timeout=600, on_event=on_event)
    assert sent and result.status == "interrupted", result.events[-3:]
    assert env.server.get("/queue").json()["queue_running"] == []
    _alive(env)
    _unchanged(before, _snapshot(env))


def test_interrupt_while_sampling_the_model(env):
    """Interrupt during the real model's sampler (tiny weights): stopped, nothing written."""
    g = load_model("")
    g["4"]["inputs"].update(trajectories="orbit", steps=3, seed=1234)
    before = _snapshot(env)
    sent = []

    def on_event(event):
        d = event.get("data", {})
        # stage 1 (lift) + 3 stages (render, retrieve) … then sampler steps push the value past 3
        if event.get("type") == "progress" and d.get("node") == "4" and d.get("value", 0) >= 4 and not sent:
            sent.append(True)
            env.server.interrupt()

    result = env.server.run(g, timeout=600, on_event=on_event)
    assert sent and result.status == "interrupted", (result.status, result.error)
    _alive(env)
    _unchanged(before, _snapshot(env))


# --------------------------------------------------------------------------------------------
# the model path: the largest seed (defect 3) and out-of-memory


def test_scene_loop_at_the_largest_seed_finishes_every_clip(env):
    g = load_model("")
    g["4"]["inputs"]["seed"] = TOP_SEED
    result = env.server.run(g, timeout=900)
    assert result.status == "success", (result.error, env.server.log()[-3000:])
    (report_file,) = env.server.output_files(result)
    report = json.loads(report_file.read_text())
    assert len(report["trajectories"]) == 2 and report["model"]["seed"] == TOP_SEED


HEADROOM = 8 * 2**20  # the keyframe VAE alone needs far more at once for 21 frames of 256×128


def _sampler_graph(seed: int) -> dict:
    """Scene (256×128) → cloud → preset trajectory → GGM render → WorldStereo Sampler → MP4 (tiny weights)."""
    g = {"1": _scene()["1"], "2": load_model("")["2"], "3": _cloud_nodes()["2"]}
    g["1"] = {**g["1"], "inputs": {**g["1"]["inputs"], "width": 256, "height": 128}}
    g["4"] = {
        "class_type": "WorldStereoTrajectoryBuilder",
        "inputs": {
            "camera": ["1", 2],
            "preset": "orbit",
            "median_depth": 0.0,
            "angle": 0.0,
            "extent": 0.0,
            "num_frames": 81,
            "camera_json": "",
            "keyframes": "",
            "depth": ["1", 1],
        },
    }
    g["5"] = {
        "class_type": "WorldStereoRenderCache",
        "inputs": {"cache": ["3", 0], "trajectory": ["4", 0], "keyframes_only": True, "radius": 0.008},
    }
    g["6"] = {
        "class_type": "WorldStereoGGMControl",
        "inputs": {"render": ["5", 0], "hole_mask": ["5", 1], "trajectory": ["4", 0]},
    }
    g["7"] = {
        "class_type": "WorldStereoSampler",
        "inputs": {
            "model": ["2", 0],
            "image": ["1", 0],
            "ggm": ["6", 0],
            "prompt": "a room",
            "negative_prompt": "",
            "sampler": "auto",
            "steps": 1,
            "cfg": 1.0,
            "shift": 0.0,
            "seed": seed,
        },
    }
    g["8"] = {
        "class_type": "WorldStereoSaveVideo",
        "inputs": {"frames": ["7", 0], "filename_prefix": "hostile/oom", "fps": 8.0},
    }
    return g


def test_out_of_memory_in_the_model_says_what_to_change(env):
    """A CPU out-of-memory inside generation becomes an error that names offload and resolution,
    and the server survives it. Simulated: the server's address space is capped a little above
    what it maps now — enough for the server's own bookkeeping, far too little for the sampler's
    tensors (the module's server runs with a fixed malloc mmap threshold, so every large tensor
    needs new address space) — and only the sampler runs (everything upstream is cached)."""
    warm = env.server.run(_sampler_graph(seed=1), timeout=900)  # loads and caches everything upstream
    assert warm.status == "success", warm.error
    pid = env.server.proc.pid
    with open(f"/proc/{pid}/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    old = resource.prlimit(pid, resource.RLIMIT_AS)
    before = _snapshot(env)
    try:
        resource.prlimit(pid, resource.RLIMIT_AS, (vm + HEADROOM, old[1]))
        result = env.server.run(_sampler_graph(seed=2), timeout=600)
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, old)
    assert result.status == "error", result.status
    assert result.error["node_id"] == "7", result.error
    msg = result.error["exception_message"]
    assert "out of memory" in msg and "offload" in msg and "resolution" in msg, result.error
    _alive(env)
    _unchanged(before, _snapshot(env))
    g = bank_save("hostile/after_oom")
    g["1"]["inputs"]["seed"] = 4242
    again = env.server.run(g, timeout=300)  # the next prompt runs as usual
    assert again.status == "success", again.error
