"""Checkpoint loading, once for every network: files, config, key plan, key match, streamed tensors.

Every loader of the library (WorldStereo and Uni3C in ``models/loading.py``, the encoders, the Wan
VAE, MoGe-2 and WorldMirror) goes through the same five steps:

1. **files** — :func:`checkpoint_files`: one ``.safetensors`` file, a folder holding one (or the
   named ``model.safetensors``), or a sharded set with its ``*.safetensors.index.json``. Pickle files
   (``.pt``/``.pth``/``.bin``/``.ckpt``, or a ``torch.save`` zip under any name) are refused here and
   nowhere else: they can run code when read. Every file's framing is checked before a tensor is read
   (truncated downloads, corrupt headers).
2. **config** — one convention: the architecture is the JSON object stored under the safetensors
   metadata key ``"config"`` (:data:`CONFIG_METADATA_KEY`) and/or a ``config.json`` beside the
   weights; the metadata key ``"model"`` names the network (so a file handed to the wrong loader is
   named). :func:`embedded_config` also reads the keys earlier versions wrote
   (:data:`LEGACY_CONFIG_KEYS`), so their files still load.
3. **plan** — a :class:`ConversionPlan`: for each key of the model, a recipe that reads the source
   tensor(s) lazily (renames, splits, fp8 dequantisation live in ``models/conversion.py``).
4. **match** — :func:`match_keys`: the plan against the model's keys and shapes; a mismatch raises a
   :class:`CheckpointMismatchError` naming the missing / unexpected key *groups* and the likely cause.
5. **stream** — :func:`stream_weights`: the model is built on ``meta``; each tensor is read from its
   file (seek + read, see :class:`SafetensorsSource`), cast once to its device and dtype and
   assigned, so host memory never holds the whole state dict (nor a memory map of the file).

:func:`save_checkpoint` writes the other way (config in the metadata, atomically).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from . import atomic
from .errors import (
    CheckpointMismatchError,
    CorruptFileError,
    InvalidFileError,
    InvalidOptionError,
    MissingFileError,
    UnsafeFileError,
    WorldStereoError,
)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
CONFIG_METADATA_KEY = "config"
"""Safetensors metadata key holding a checkpoint's architecture as a JSON object (all our writers)."""
LEGACY_CONFIG_KEYS = ("worldstereo_config", "uni3c_config", "model_config", "worldmirror_config")
"""Metadata keys earlier versions wrote (WorldStereo, Uni3C, MoGe, WorldMirror); still read."""
MODEL_METADATA_KEY = "model"
"""Safetensors metadata key naming which network a file holds (one of :data:`MODEL_KINDS`)."""
MODEL_KINDS: Mapping[str, tuple[str, str]] = {
    "worldstereo": ("WorldStereo transformer", "load_worldstereo"),
    "uni3c": ("Uni3C ControlNet", "load_uni3c"),
    "moge": ("MoGe-2 depth model", "load_moge"),
    "worldmirror": ("WorldMirror reconstruction model", "load_worldmirror"),
    "umt5": ("UMT5 text encoder", "load_text_encoder"),
    "clip_vision": ("CLIP vision encoder", "load_image_encoder"),
    "wan_vae": ("Wan VAE", "load_wan_vae"),
}
"""``kind: (what it is, the loader that reads it)``."""

TensorSource = Callable[[str], torch.Tensor]
"""Reads one source tensor by key (a :class:`SafetensorsSource` or ``dict.__getitem__``)."""
Recipe = Callable[[TensorSource], torch.Tensor]
DtypeRule = Callable[[str, torch.dtype], torch.dtype]
"""``(model key, source dtype) -> target dtype`` for loaders with per-tensor precision rules."""


# ------------------------------------------------------------------------------------------ files

_CONVERT_ADVICE = (
    "convert it to safetensors once, in a trusted environment (safetensors.torch.save_file("
    "torch.load(f, weights_only=True), 'model.safetensors'), keeping its config)"
)


def refuse_pickle(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointMismatchError` if ``path`` is a pickle / ``torch.save`` file (by name or by content)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"{path.name} is a pickle checkpoint ({path.suffix}); pickles can run code and are never loaded — "
            + _CONVERT_ADVICE
        )
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(4)
        # torch.save writes a zip (PK\x03\x04); a plain pickle starts with the PROTO opcode 0x80
        if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
            raise UnsafeFileError(
                f"{path} is a pickle/torch.save file despite its name; pickles are never loaded — convert it "
                "to safetensors first"
            )


def read_safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a safetensors file's framing and return its header (``{key: {dtype, shape, data_offsets}}``).

    Catches pickle files, truncated downloads and corrupt headers with actionable messages, before
    any tensor is read.
    """
    return _read_header(path)[0]


def _read_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """``(header, byte offset of the data section)`` of a validated safetensors file."""
    path = Path(path)
    refuse_pickle(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{path} is {size} bytes — too short to be a safetensors file (truncated download?)")
        n = int.from_bytes(head, "little")
        if n <= 1 or n > min(size - 8, 512 * 1024 * 1024):
            raise CorruptFileError(
                f"{path} does not start with a valid safetensors header (header length {n}, file {size} bytes); "
                "the file is corrupt or truncated — download it again"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptFileError(f"{path} has a corrupt safetensors header; download it again") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path} has a corrupt safetensors header; download it again")
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError):
        raise CorruptFileError(f"{path} has a corrupt safetensors header; download it again") from None
    if 8 + n + end > size:
        raise CorruptFileError(
            f"{path} is truncated: its header describes {8 + n + end} bytes but the file has {size}; "
            "the download or copy did not finish — fetch it again"
        )
    return header, 8 + n


INDEX_SUFFIX = ".safetensors.index.json"
"""How a sharded set's index is named (``model.safetensors.index.json``, diffusers'
``diffusion_pytorch_model.safetensors.index.json``)."""


def folder_entry_file(names: Iterable[str], preferred: str | None = None) -> str | None:
    """Which of a checkpoint folder's file ``names`` the checkpoint is read through: a sharded set's
    ``*.safetensors.index.json``, else ``preferred`` (e.g. ``model.safetensors``), else its only
    ``.safetensors`` file; None when it has none or several (no index). No I/O: :func:`checkpoint_files`
    reads the folder this way, and ComfyUI's checkpoint list names each folder by this file."""
    names = sorted(names)
    index = [n for n in names if n.endswith(INDEX_SUFFIX)]
    if index:
        return index[0]
    if preferred is not None and preferred in names:
        return preferred
    weights = [n for n in names if n.endswith(".safetensors")]
    return weights[0] if len(weights) == 1 else None


def checkpoint_files(path: str | os.PathLike, what: str, preferred: str | None = None) -> list[Path]:
    """The safetensors file(s) of ``path``, validated (framing) and pickle-free.

    ``path`` is a file, or a folder with a ``*.safetensors.index.json`` (sharded; every listed shard
    must exist), the ``preferred`` file name (e.g. ``model.safetensors``), or exactly one
    ``.safetensors`` file. ``what`` names the model in error messages.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what}: {path} does not exist")
    if path.is_file():
        files = [path]
    else:
        entry = folder_entry_file([p.name for p in path.iterdir() if p.is_file()], preferred)
        if entry is not None and entry.endswith(INDEX_SUFFIX):
            files = [path / name for name in _index_shards(path / entry, what)]
            absent = [f.name for f in files if not f.exists()]
            if absent:
                raise CorruptFileError(f"{what}: shard(s) {absent} listed in {entry} are missing from {path}")
        elif entry is not None:
            files = [path / entry]
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
                want = preferred or ".safetensors file"
                if pickles:
                    raise UnsafeFileError(
                        f"{what}: no {want} in {path}, only the pickle checkpoint(s) {pickles}; pickles can run "
                        f"code and are never loaded — {_CONVERT_ADVICE}"
                    )
                raise MissingFileError(f"{what}: no {want} in {path}; point to the checkpoint folder or file")
            if len(files) > 1:
                raise InvalidFileError(
                    f"{what}: {path} holds several .safetensors files ({[f.name for f in files]}) and no index; "
                    "point to the file to load"
                )
    for f in files:
        read_safetensors_header(f)
    return files


def _index_shards(index: Path, what: str) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CorruptFileError(f"{what}: {index} is not a valid safetensors index; download it again") from None


# ----------------------------------------------------------------------------------------- config


def read_metadata(files: Iterable[str | os.PathLike]) -> dict[str, str]:
    """The string metadata of one or more safetensors files (the first file's value wins)."""
    out: dict[str, str] = {}
    for f in files:
        for k, v in (read_safetensors_header(f).get("__metadata__") or {}).items():
            out.setdefault(k, v)
    return out


def embedded_config(
    files: Iterable[str | os.PathLike], kind: str, legacy: Collection[str] = ()
) -> dict[str, Any] | None:
    """The ``kind`` architecture stored in the files' metadata (``"config"``, else one of the ``legacy``
    keys earlier versions wrote), or ``None``.

    A file whose metadata names another model (``"model"``) raises a :class:`CheckpointMismatchError` that
    says which loader reads it.
    """
    files = list(files)
    meta = read_metadata(files)
    found = meta.get(MODEL_METADATA_KEY)
    if found is not None and found != kind:
        what, loader = MODEL_KINDS.get(found, (found, "its own loader"))
        raise CheckpointMismatchError(
            f"{Path(files[0]).name} holds a {what} (its metadata says model={found!r}), not a "
            f"{MODEL_KINDS.get(kind, (kind,))[0]}: load it with {loader}"
        )
    for key in (CONFIG_METADATA_KEY, *legacy):
        if key in meta:
            try:
                cfg = json.loads(meta[key])
            except json.JSONDecodeError:
                raise CorruptFileError(
                    f"{Path(files[0]).name}: the embedded {key!r} metadata is not valid JSON"
                ) from None
            if not isinstance(cfg, dict):
                raise CorruptFileError(f"{Path(files[0]).name}: the embedded {key!r} metadata must be a JSON object")
            return cfg
    return None


def read_json(path: str | os.PathLike, what: str = "config") -> Any:
    """A JSON file, with an actionable error for broken files."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CorruptFileError(f"cannot read {what} {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CorruptFileError(
            f"{path} is not valid JSON ({exc}); restore the {what} that came with the weights"
        ) from None


_Config = TypeVar("_Config")


def config_dataclass(
    cls: type[_Config],
    raw: Any,
    where: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    ignore_unknown: bool = False,
    convert: Callable[[str, Any], Any] | None = None,
) -> _Config:
    """The dataclass config ``cls`` that a stored config (a JSON object) describes: the one parser of the
    loaders' dataclass configs (GGM / Uni3C branch, paper memory branch, WorldMirror).

    Fields come from ``raw`` over ``defaults``. A key that is no field of ``cls`` raises, unless
    ``ignore_unknown`` (upstream files carry keys we do not model). ``convert(name, value)`` normalises
    each value (JSON lists to tuples, numbers to int). A value of the wrong type, or one ``cls`` refuses,
    raises :class:`CheckpointMismatchError` naming ``where``.
    """
    if not isinstance(raw, Mapping):
        raise CheckpointMismatchError(f"{where} must be a JSON object, got {type(raw).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown and not ignore_unknown:
        raise CheckpointMismatchError(
            f"unknown {where} keys {unknown} (known: {sorted(names)}); was the file written by a newer version?"
        )
    values = {**(defaults or {}), **{k: v for k, v in raw.items() if k in names}}
    try:
        if convert is not None:
            values = {k: convert(k, v) for k, v in values.items()}
        return cls(**values)
    except WorldStereoError:
        raise
    except (TypeError, ValueError) as exc:
        raise CheckpointMismatchError(f"{where}: {exc} (got {dict(raw)})") from None


def config_json_beside(path: str | os.PathLike, files: list[Path], single_file_too: bool = True) -> Path | None:
    """The ``config.json`` of a checkpoint folder (``path`` a folder), or beside a single file
    (``single_file_too``; off for files in shared folders such as ComfyUI's ``models/vae``)."""
    path = Path(path)
    if path.is_dir():
        cand = path / "config.json"
    elif single_file_too:
        cand = files[0].parent / "config.json"
    else:
        return None
    return cand if cand.is_file() else None


def stored_config(
    path: str | os.PathLike,
    files: list[Path],
    kind: str,
    legacy: Collection[str] = (),
    single_file_too: bool = True,
) -> tuple[Any, str]:
    """The architecture a checkpoint states, and where it says so: the ``config.json`` of its folder
    (or beside a single file, ``single_file_too``; parsed JSON, which the loader's parser checks), else
    the config embedded in its metadata (:func:`embedded_config`), else ``(None, "")`` — the loader then
    uses the released defaults."""
    beside = config_json_beside(path, files, single_file_too)
    if beside is not None:
        return read_json(beside, f"{MODEL_KINDS[kind][0]} config.json"), str(beside)
    embedded = embedded_config(files, kind, legacy)
    return (embedded, f"{Path(files[0]).name} metadata") if embedded is not None else (None, "")


# ------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ConversionPlan:
    """How to build each target tensor from a source file.

    ``targets`` maps target keys (the model's names) to recipes; ``ignored`` are source keys
    deliberately left out (projection heads, fp8 markers…); ``layout`` names what was detected;
    ``extras`` maps names of non-weight payloads (e.g. ``"spiece_model"``) to their source keys.
    """

    layout: str
    targets: Mapping[str, Recipe]
    ignored: tuple[str, ...] = ()
    extras: Mapping[str, str] = field(default_factory=dict)

    def source_key(self, target: str) -> str:
        """The source key a target is read from (first one, for split / scaled tensors)."""
        return getattr(self.targets[target], "source", target)

    def materialize(self, source: TensorSource | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run every recipe (tests and small models; loaders stream instead)."""
        get = source.__getitem__ if isinstance(source, Mapping) else source
        return {k: r(get) for k, r in self.targets.items()}


def tag_recipe(recipe: Recipe, source: str) -> Recipe:
    """Record the source key a recipe reads (lets loaders read shapes from headers)."""
    recipe.source = source  # type: ignore[attr-defined]
    return recipe


def take(key: str) -> Recipe:
    """The recipe that reads ``key`` unchanged."""
    return tag_recipe(lambda get: get(key), key)


def bind_recipe(recipe: Recipe, source: SafetensorsSource) -> Recipe:
    """``recipe`` reading from its own ``source`` whatever source it is later called with (a plan that
    fills some keys from a second file, e.g. the base model)."""

    def bound(_ignored: TensorSource) -> torch.Tensor:
        return recipe(source)

    bound.source = getattr(recipe, "source", None)  # type: ignore[attr-defined]
    bound.reshapes = getattr(recipe, "reshapes", False)  # type: ignore[attr-defined]
    bound.read_shape = lambda: source.shape(bound.source)  # type: ignore[attr-defined]
    bound.file = source.file_of(bound.source) if bound.source is not None else None  # type: ignore[attr-defined]
    return bound


def identity_plan(keys: Iterable[str], layout: str = "native", prefix: str = "") -> ConversionPlan:
    """Keys used as they are (``prefix`` stripped): our own files and the released ones."""
    return ConversionPlan(
        layout,
        {k[len(prefix) :]: take(k) for k in keys if k.startswith(prefix)},
        tuple(k for k in keys if not k.startswith(prefix)),
    )


# ------------------------------------------------------------------------------------------ match


def key_group(key: str, depth: int = 1) -> str:
    """``blocks.3.attn1.to_q.weight`` → ``blocks.*`` (depth 1) or ``blocks.attn1.*`` (depth 2): layer
    indices dropped, so groups name the parts of a network."""
    parts = [p for p in key.split(".")[:-1] if not p.isdigit()] or key.split(".")[:1]
    return ".".join(parts[:depth]) + ".*"


Grouping = int | Callable[[str], str]
"""How keys are grouped in messages: a depth for :func:`key_group`, or a function of the key."""


def describe_keys(keys: Iterable[str], depth: Grouping = 1, limit: int = 8) -> str:
    """``"blocks.* (400), controlnet.* (60)"``: key counts per group."""
    group = depth if callable(depth) else (lambda k: key_group(k, depth))
    counts = Counter(group(k) for k in keys)
    items = [f"{g} ({n})" for g, n in sorted(counts.items())]
    return ", ".join(items[:limit]) + (f", … ({len(items) - limit} more groups)" if len(items) > limit else "")


def match_keys(
    plan: ConversionPlan,
    expected: Mapping[str, tuple[int, ...] | torch.Size],
    shape_of: Callable[[str], tuple[int, ...]],
    what: str,
    diagnose: Callable[[set[str], set[str]], str] | str = "",
    depth: Grouping = 1,
) -> dict[str, Recipe]:
    """Match the plan's targets to the model's ``expected`` keys and shapes; returns ``{model key: recipe}``.

    ``shape_of(source_key)`` reads a shape from the file header. On a mismatch raises
    :class:`CheckpointMismatchError` naming the missing and unexpected key groups, then ``diagnose(missing,
    unexpected)`` (or the fixed hint) — the likely cause and what to do.
    """
    missing = set(expected) - set(plan.targets)
    unexpected = set(plan.targets) - set(expected)
    if missing or unexpected:
        parts = [f"{what} does not match the model:"]
        if missing:
            parts.append(f"missing {len(missing)} keys under {describe_keys(missing, depth)};")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys under {describe_keys(unexpected, depth)};")
        hint = diagnose(missing, unexpected) if callable(diagnose) else diagnose
        if hint:
            parts.append(hint)
        raise CheckpointMismatchError(" ".join(parts))
    bad = []
    for k, shape in expected.items():
        recipe = plan.targets[k]
        src = getattr(recipe, "source", None)
        if src is None or getattr(recipe, "reshapes", False):
            continue  # split / converted tensors: shape checked when materialised
        read_shape = getattr(recipe, "read_shape", None)
        got = tuple(read_shape() if read_shape is not None else shape_of(src))
        if got != tuple(shape):
            bad.append((k, got, tuple(shape)))
    if bad:
        k, got, want = bad[0]
        raise CheckpointMismatchError(
            f"{what}: {len(bad)} tensors have the wrong shape, e.g. {k} is {list(got)} in the file but the model "
            f"expects {list(want)}; the config (sizes) does not match these weights — use the checkpoint's own "
            "config (a test file written at other sizes needs its sizes passed explicitly)"
        )
    return {k: plan.targets[k] for k in expected}


# ----------------------------------------------------------------------------------------- stream

_ST_DTYPES: Mapping[str, torch.dtype] = {
    name: dt
    for name, dt in {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
        "F8_E5M2": getattr(torch, "float8_e5m2", None),
    }.items()
    if dt is not None
}


class SafetensorsSource:
    """Lazy tensor reads over one or more safetensors files.

    Call it with a key to read one tensor; :meth:`shape` and :attr:`keys` come from the validated
    headers. Each tensor's bytes are read (seek + ``readinto``) straight into a fresh, aligned torch
    buffer — not through a memory map: touched pages of a mapped file count as resident memory until
    the map closes, so ``safe_open`` would charge the whole file to the process (measured with
    ``bench/load_memory.py``: 100 % of the checkpoint transient on top of the weights, vs one tensor).
    """

    def __init__(self, files: list[Path], stack: ExitStack) -> None:
        self.files = files
        self._entries: dict[str, tuple[Any, int, Mapping[str, Any], Path]] = {}
        for f in files:
            header, data_start = _read_header(f)
            fd = stack.enter_context(open(f, "rb", buffering=0))
            for k, info in header.items():
                if k != "__metadata__":
                    self._entries[k] = (fd, data_start, info, f)

    @property
    def keys(self) -> list[str]:
        return list(self._entries)

    def __call__(self, key: str) -> torch.Tensor:
        fd, data_start, info, path = self._entries[key]
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            begin, end = (int(v) for v in info["data_offsets"])
            shape = [int(v) for v in info["shape"]]
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{path}: tensor {key} has an unsupported or corrupt entry {dict(info)}") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != math.prod(shape) * itemsize:
            raise CorruptFileError(
                f"{path}: tensor {key} has {end - begin} bytes for shape {shape}; the file is corrupt"
            )
        raw = torch.empty(end - begin, dtype=torch.uint8)
        view, done = memoryview(raw.numpy()), 0
        fd.seek(data_start + begin)
        while done < len(view):  # unbuffered reads may return less than asked
            got = fd.readinto(view[done:])
            if not got:
                raise CorruptFileError(f"{path} ended inside tensor {key}: the file is truncated — download it again")
            done += got
        return raw.view(dtype).reshape(shape)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self._entries[key][2]["shape"])

    def file_of(self, key: str) -> Path:
        return self._entries[key][3]


@contextmanager
def open_tensor_source(files: list[Path]) -> Iterator[tuple[list[str], SafetensorsSource]]:
    """``(keys, source)`` over one or more safetensors files, reading tensors lazily."""
    with ExitStack() as stack:
        src = SafetensorsSource(files, stack)
        yield src.keys, src


def read_extra_bytes(files: list[Path], key: str) -> bytes:
    """A uint8 payload stored as a tensor (e.g. ComfyUI's ``spiece_model``) as raw bytes."""
    with open_tensor_source(files) as (_, get):
        return get(key).to(torch.uint8).numpy().tobytes()


def stream_weights(
    model: torch.nn.Module,
    recipes: Mapping[str, Recipe],
    source: TensorSource,
    device: torch.device | str,
    dtype: torch.dtype | DtypeRule | None,
    transform: Callable[[str, torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
) -> torch.nn.Module:
    """Fill a ``meta``-built model from ``source``, one tensor at a time, each cast once to ``device`` and
    its dtype; returns the model in eval mode (``requires_grad`` is the caller's choice).

    ``dtype``: one dtype for every floating tensor, ``None`` for the file's, or a :data:`DtypeRule`.
    ``transform(key, tensor)``: state entries made from each cast tensor (e.g. a float8 weight and its
    scale, or a tensor placed on the host instead), applied before the next tensor is read.
    Non-persistent buffers built on ``meta`` are recreated by the model's ``rebuild_buffers(device)``
    if it has one; ``position_ids`` buffers (transformers) are recreated here.
    """
    device = torch.device(device)
    state: dict[str, torch.Tensor] = {}
    for key, recipe in recipes.items():
        t = recipe(source)
        target = t.dtype
        if t.is_floating_point() and dtype is not None:
            target = dtype(key, t.dtype) if callable(dtype) else dtype
        cast = t.to(device=device, dtype=target)  # the source's own buffer when nothing changes
        del t  # at most one transient host copy alive
        if transform is None:
            state[key] = cast
        else:
            state.update(transform(key, cast))
        del cast
    model.load_state_dict(state, strict=True, assign=True)
    del state
    if hasattr(model, "rebuild_buffers"):
        model.rebuild_buffers(device)
    for mod_name, module in model.named_modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                if name != "position_ids":
                    raise CheckpointMismatchError(
                        f"internal: buffer {mod_name}.{name} was not initialised while loading"
                    )
                n = buf.shape[-1]
                module.register_buffer(name, torch.arange(n, device=device).expand(buf.shape), persistent=False)
    return model.eval()


def load_checkpoint(
    model: torch.nn.Module,
    files: list[Path],
    plan_for: Callable[[list[str]], ConversionPlan] | None,
    what: str,
    device: torch.device | str,
    dtype: torch.dtype | DtypeRule | None,
    diagnose: Callable[[set[str], set[str]], str] | str = "",
    depth: Grouping = 1,
) -> torch.nn.Module:
    """Steps 3–5 for a model already built on ``meta``: plan (``plan_for(keys)``, default: keys as they
    are), match against the model's state dict, stream. Returns the loaded model."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with open_tensor_source(files) as (keys, source):
        plan = plan_for(keys) if plan_for is not None else identity_plan(keys)
        recipes = match_keys(plan, expected, source.shape, what, diagnose, depth)
        return stream_weights(model, recipes, source, device, dtype)


# ------------------------------------------------------------------------------------------- save


def save_checkpoint(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    kind: str,
    config: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``state`` to ``path`` as safetensors, ``config`` under the ``"config"`` metadata key and
    ``kind`` (one of :data:`MODEL_KINDS`) under ``"model"``.

    Tensors are copied to the host (shared storages untied; floating ones cast to ``dtype`` if given).
    Written through :func:`worldstereo_core.atomic.write_file`, so no half-written file remains.
    """
    from safetensors.torch import save_file

    if kind not in MODEL_KINDS:
        raise InvalidOptionError(f"unknown checkpoint kind {kind!r}; use one of {sorted(MODEL_KINDS)}")
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().to("cpu").contiguous().clone()
        for k, v in state.items()
    }
    metadata = {MODEL_METADATA_KEY: kind}
    if config is not None:
        metadata[CONFIG_METADATA_KEY] = json.dumps(dict(config))
    return atomic.write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def write_config_json(folder: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """``folder/config.json`` (indented JSON), written atomically."""
    return atomic.write_text(Path(folder) / "config.json", json.dumps(dict(config), indent=2))


def save_model_folder(
    state: Mapping[str, torch.Tensor],
    folder: str | os.PathLike,
    kind: str,
    config: Mapping[str, Any],
    dtype: torch.dtype | None = None,
) -> Path:
    """The release's folder layout: ``folder/model.safetensors`` (config in its metadata,
    :func:`save_checkpoint`) and ``folder/config.json``, which :func:`stored_config` reads back. Returns
    the weights' path."""
    path = save_checkpoint(state, Path(folder) / "model.safetensors", kind, config, dtype)
    write_config_json(folder, config)
    return path


__all__ = [
    "CONFIG_METADATA_KEY",
    "LEGACY_CONFIG_KEYS",
    "MODEL_KINDS",
    "MODEL_METADATA_KEY",
    "PICKLE_SUFFIXES",
    "ConversionPlan",
    "Recipe",
    "SafetensorsSource",
    "TensorSource",
    "bind_recipe",
    "checkpoint_files",
    "config_dataclass",
    "config_json_beside",
    "describe_keys",
    "embedded_config",
    "identity_plan",
    "key_group",
    "load_checkpoint",
    "match_keys",
    "open_tensor_source",
    "read_extra_bytes",
    "read_json",
    "read_metadata",
    "read_safetensors_header",
    "refuse_pickle",
    "save_checkpoint",
    "save_model_folder",
    "stored_config",
    "stream_weights",
    "tag_recipe",
    "take",
    "write_config_json",
]
