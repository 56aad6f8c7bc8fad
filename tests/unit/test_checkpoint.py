"""The one checkpoint loader (worldstereo_core.checkpoint): files, pickles, config convention, key match, streaming."""

from __future__ import annotations

import ast
import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from testsupport import REPO_ROOT
from worldstereo_core.checkpoint import (
    CONFIG_METADATA_KEY,
    MODEL_METADATA_KEY,
    checkpoint_files,
    config_dataclass,
    describe_keys,
    embedded_config,
    folder_entry_file,
    identity_plan,
    load_checkpoint,
    match_keys,
    save_checkpoint,
    save_model_folder,
    stored_config,
)
from worldstereo_core.errors import CheckpointMismatchError, CorruptFileError, InvalidOptionError, UnsafeFileError


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 3) for _ in range(2)])
        self.head = torch.nn.Linear(3, 1)


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in _Net().state_dict().items()}


def test_sharded_folder_loads_from_its_index(tmp_path: Path) -> None:
    state = _state()
    a = {k: v for k, v in state.items() if k.startswith("blocks.0")}
    b = {k: v for k, v in state.items() if k not in a}
    save_file(a, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(b, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in a} | {k: "model-00002-of-00002.safetensors" for k in b}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    files = checkpoint_files(tmp_path, "test net")
    assert [f.name for f in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    with torch.device("meta"):
        net = _Net()
    net = load_checkpoint(net, files, None, "test net", "cpu", torch.float64)
    for k, v in net.state_dict().items():
        assert v.dtype == torch.float64 and torch.equal(v, state[k].double()), k
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CorruptFileError, match=r"shard\(s\) \['model-00002-of-00002.safetensors'\] .* missing"):
        checkpoint_files(tmp_path, "test net")


def test_the_file_a_folder_is_read_through(tmp_path: Path) -> None:
    """One rule names the file a checkpoint folder is read through (the loader reads it; ComfyUI's
    checkpoint list names the folder by it): the index of a sharded set, else the preferred name, else
    the only .safetensors file; none when that is ambiguous or absent."""
    release = ["config.json", "model.safetensors"]
    assert folder_entry_file(release, "model.safetensors") == "model.safetensors"
    sharded = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert folder_entry_file([*sharded, "model.safetensors.index.json"]) == "model.safetensors.index.json"
    assert folder_entry_file(sharded) is None  # several files, no index
    assert folder_entry_file(["config.json", "weights.safetensors"], "model.safetensors") == "weights.safetensors"
    assert folder_entry_file(["config.json", "model.pt"], "model.safetensors") is None
    # checkpoint_files reads a folder by the same rule
    save_file(_state(), str(tmp_path / "weights.safetensors"))
    save_file(_state(1), str(tmp_path / "model.safetensors"))
    assert [f.name for f in checkpoint_files(tmp_path, "test net", "model.safetensors")] == ["model.safetensors"]


@pytest.mark.parametrize("name", ["w.pt", "w.bin", "w.ckpt", "w.safetensors"])
def test_pickles_are_refused_by_name_and_by_content(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeFileError, match="pickle"):
        checkpoint_files(path, "test net")
    folder = tmp_path / "only_pickle"
    folder.mkdir()
    (folder / "model.pt").write_bytes(pickle.dumps({}))
    with pytest.raises(
        UnsafeFileError, match=r"no model.safetensors in .* only the pickle checkpoint\(s\) \['model.pt'\]"
    ):
        checkpoint_files(folder, "test net", preferred="model.safetensors")


def test_config_convention_and_legacy_keys(tmp_path: Path) -> None:
    path = save_checkpoint(_state(), tmp_path / "net.safetensors", "moge", {"width": 3})
    assert embedded_config([path], "moge") == {"width": 3}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta[MODEL_METADATA_KEY] == "moge" and json.loads(meta[CONFIG_METADATA_KEY]) == {"width": 3}
    # a file written by an earlier version (its own metadata key, no model name) still gives its config
    old = tmp_path / "old.safetensors"
    save_file(_state(), str(old), metadata={"worldmirror_config": json.dumps({"embed_dim": 32})})
    assert embedded_config([old], "worldmirror", legacy=("worldmirror_config",)) == {"embed_dim": 32}
    assert embedded_config([old], "worldmirror") is None
    # a file of another network is named, with the loader that reads it
    with pytest.raises(
        CheckpointMismatchError, match=r"MoGe-2 depth model .* not a WorldMirror .* load it with load_moge"
    ):
        embedded_config([path], "worldmirror")
    with pytest.raises(InvalidOptionError, match="unknown checkpoint kind"):
        save_checkpoint(_state(), tmp_path / "x.safetensors", "resnet")
    assert not (tmp_path / "x.safetensors").exists() and not list(tmp_path.glob(".*partial"))


def test_model_folder_round_trip_and_where_a_config_is_read_from(tmp_path: Path) -> None:
    """The folder layout: config.json beside the weights wins, else the embedded config (current key, then
    legacy ones), else nothing; a shared folder's config.json never describes a single file."""
    weights = save_model_folder(_state(), tmp_path / "m", "moge", {"width": 3})
    assert weights == tmp_path / "m" / "model.safetensors"
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == {"width": 3}
    assert stored_config(tmp_path / "m", [weights], "moge") == ({"width": 3}, str(tmp_path / "m" / "config.json"))
    (tmp_path / "m" / "config.json").write_text(json.dumps({"width": 4}))  # the folder's config.json wins
    assert stored_config(tmp_path / "m", [weights], "moge")[0] == {"width": 4}
    (tmp_path / "m" / "config.json").unlink()
    assert stored_config(tmp_path / "m", [weights], "moge") == ({"width": 3}, "model.safetensors metadata")
    with pytest.raises(CheckpointMismatchError, match="load_moge"):
        stored_config(tmp_path / "m", [weights], "worldmirror")

    old = tmp_path / "old.safetensors"
    save_file(_state(), str(old), metadata={"model_config": json.dumps({"width": 5})})
    assert stored_config(old, [old], "moge", legacy=("model_config",))[0] == {"width": 5}
    assert stored_config(old, [old], "moge") == (None, "")
    (tmp_path / "config.json").write_text(json.dumps({"width": 6}))
    assert stored_config(old, [old], "moge")[0] == {"width": 6}
    assert stored_config(old, [old], "moge", single_file_too=False) == (None, "")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        stored_config(old, [old], "moge")


@dataclasses.dataclass(frozen=True)
class _Sizes:
    width: int = 8
    layers: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError("width must be positive")


def test_config_dataclass_parses_checks_and_names_the_config() -> None:
    as_tuple = lambda _, v: tuple(v) if isinstance(v, list) else v
    assert config_dataclass(_Sizes, {"layers": [3]}, "sizes", convert=as_tuple) == _Sizes(8, (3,))
    assert config_dataclass(_Sizes, {}, "sizes", defaults={"width": 2}) == _Sizes(2)
    assert config_dataclass(_Sizes, {"width": 4, "extra": 1}, "sizes", ignore_unknown=True) == _Sizes(4)
    with pytest.raises(CheckpointMismatchError, match=r"unknown sizes keys \['extra'\]"):
        config_dataclass(_Sizes, {"width": 4, "extra": 1}, "sizes")
    with pytest.raises(CheckpointMismatchError, match="sizes must be a JSON object, got list"):
        config_dataclass(_Sizes, [1], "sizes")
    with pytest.raises(CheckpointMismatchError, match="sizes: width must be positive"):
        config_dataclass(_Sizes, {"width": 0}, "sizes")
    with pytest.raises(CheckpointMismatchError, match="sizes: invalid literal"):
        config_dataclass(
            _Sizes, {"width": "wide"}, "sizes", convert=lambda _, v: int(v) if not isinstance(v, tuple) else v
        )


def test_key_mismatch_names_groups_and_cause() -> None:
    plan = identity_plan(["blocks.0.weight", "blocks.0.bias", "extra.1.weight"])
    expected = {"blocks.0.weight": (3, 3), "blocks.0.bias": (3,), "blocks.1.weight": (3, 3), "head.weight": (1, 3)}
    with pytest.raises(CheckpointMismatchError) as err:
        match_keys(plan, expected, lambda k: (3, 3), "net.safetensors", "is it the right file?")
    msg = str(err.value)
    assert "missing 2 keys under blocks.* (1), head.* (1);" in msg
    assert "unexpected 1 keys under extra.* (1);" in msg and msg.endswith("is it the right file?")
    shapes = {"blocks.0.weight": (3, 4), "blocks.0.bias": (3,)}
    plan = identity_plan(list(shapes))
    with pytest.raises(
        CheckpointMismatchError, match=r"blocks\.0\.weight is \[3, 4\] in the file but the model expects \[3, 3\]"
    ):
        match_keys(plan, {"blocks.0.weight": (3, 3), "blocks.0.bias": (3,)}, shapes.__getitem__, "net")
    assert describe_keys(["a.0.b.weight", "a.1.b.weight", "c.weight"], depth=2) == "a.b.* (2), c.* (1)"


def test_streaming_gives_owned_aligned_tensors(tmp_path: Path) -> None:
    """Loaded tensors are fresh, aligned allocations, not views into the memory-mapped file."""
    path = save_checkpoint(_state(), tmp_path / "net.safetensors", "moge")
    with torch.device("meta"):
        net = _Net()
    net = load_checkpoint(net, [path], None, "net", "cpu", None)
    path.unlink()
    assert all(p.data_ptr() % 16 == 0 for p in net.parameters())
    torch.testing.assert_close(net.head.weight, _state()["head.weight"])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_runtime_never_imports_test_support() -> None:
    """Tiny weights are test support and the tiny sizes (``tiny_configs``) belong to the training CLI's
    ``--size tiny``: no other module of the library, and no node, imports them."""
    offenders = []
    for root in ("worldstereo_core", "nodes"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            rel = path.relative_to(REPO_ROOT).as_posix()
            names = ("tiny", "tiny_models", "testsupport")
            if not rel.startswith("worldstereo_core/training/"):
                names += ("tiny_configs",)
            bad = {n for n in _imports(path) if n.split(".")[-1] in names}
            if bad:
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {sorted(bad)}")
    assert not offenders, offenders
    assert not (REPO_ROOT / "worldstereo_core" / "models" / "tiny.py").exists()
