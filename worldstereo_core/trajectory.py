"""Camera trajectories: presets, keyframe interpolation, obstacle-aware shortening, camera.json.

All poses follow ARCHITECTURE §3 (OpenCV camera frame, ``w2c`` world-to-camera, ``K`` in pixels).

Presets are built from a *first camera* and the scene's *median depth* ``m``; the point
``c = C₀ + m·z₀`` on the first camera's optical axis at the median depth is the centre the
rotating presets turn about (paper appendix: up 45°, left/right 90° about that centre; orbit
radius 0.3·m). Motions are expressed in the first camera's frame, or — when ``world_up`` is given
— in its *levelled* frame (same position, roll and pitch removed with respect to ``world_up``),
which is how the release's reconstruction trajectories turn about the gravity axis.
Frame ``i`` of ``F`` applies the fraction ``i / (F − 1)`` of the motion, so frame 0 is the first
camera itself and the angle (or distance) grows linearly, as in the release.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation, Slerp

from . import atomic, safe_json
from .cameras import ArrayLike, Cameras, as_tensor, invert_rigid, look_at_c2w
from .errors import (
    CorruptFileError,
    InvalidCameraError,
    InvalidFileError,
    InvalidTrajectoryError,
    MalformedJsonError,
    WorldStereoError,
)

DEFAULT_NUM_FRAMES = 81
DEFAULT_NUM_KEYFRAMES = 21

# name -> default parameters (angles in degrees; radii and distances as fractions of the median
# depth). ``world_up`` (a world vector, or None for the first camera's -y) is accepted by all.
PRESETS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "orbit": MappingProxyType({"radius_x": 0.3, "radius_y": 0.3}),
        "eloop": MappingProxyType({"radius_x": 0.3, "radius_y": 0.4}),
        "up": MappingProxyType({"angle": 45.0}),
        "down": MappingProxyType({"angle": 45.0}),
        "left": MappingProxyType({"angle": 90.0}),
        "right": MappingProxyType({"angle": 90.0}),
        "aerial": MappingProxyType({"theta": 30.0, "phi": 90.0}),
        "forward": MappingProxyType({"distance": 0.5}),
        "backward": MappingProxyType({"distance": 0.5}),
        "pan": MappingProxyType({"angle": 45.0}),
        # the release's panorama "wonder" (wander) walks, wonder_*/traj{0,1}: level walk ahead;
        # traj1 first rises and tilts down, then walks (our defaults: see _preset_c2w)
        "wonder": MappingProxyType({"distance": 1.0, "rise": 0.0, "pitch": 0.0}),
    }
)
# Parameters scaled by the obstacle-aware shortening (everything that sets the extent of a move).
_EXTENT_PARAMS = ("radius_x", "radius_y", "angle", "theta", "phi", "distance", "rise", "pitch")

WONDER_LEAD_IN = 0.25
"""Share of a ``wonder`` clip spent rising / tilting before the walk: in the release's
``wonder_*/traj1`` cameras the rise and the downward tilt are complete by keyframe 5 of 20."""


def keyframe_indices(num_poses: int, num_keyframes: int = DEFAULT_NUM_KEYFRAMES) -> np.ndarray:
    """Pose indices ``[n]`` of the keyframes the model works on — the one definition every
    consumer uses (generation, GGM renders, SSM retrieval, memory update, inspector).

    As the release picks them (``src/data_utils.py``: ``np.linspace(0, F − 1, nframe,
    dtype=int)`` when ``F > nframe``, nframe = 21): truncated ``linspace``, so 81 poses give
    0, 4, …, 80, 41 poses 0, 2, …, 40 and 101 poses 0, 5, …, 100. A trajectory of at most
    ``num_keyframes`` poses is used whole (every pose is a keyframe). Keyframe 0 is always the
    first pose (the input view) and the last keyframe the last pose.
    """
    if isinstance(num_keyframes, bool) or int(num_keyframes) < 1:
        raise InvalidTrajectoryError(f"number of keyframes must be ≥ 1, got {num_keyframes}")
    F = int(num_poses)
    if F < 1:
        raise InvalidTrajectoryError(f"a trajectory has at least one pose, got {num_poses}")
    if F <= num_keyframes:
        return np.arange(F)
    return np.linspace(0, F - 1, int(num_keyframes), dtype=int)


class EmptyCameraJsonError(CorruptFileError, InvalidTrajectoryError):
    """A camera.json holding zero poses (both a bad file and an empty trajectory)."""


@dataclass(frozen=True)
class PresetRecipe:
    """How a preset trajectory was made, so it can be regenerated with a shorter extent.

    Attributes:
        name: preset name (a key of :data:`PRESETS`).
        params: ``(name, value)`` pairs after defaults were applied.
        median_depth: the scene's median depth the preset was scaled by.
    """

    name: str
    params: tuple[tuple[str, Any], ...]
    median_depth: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True, eq=False)
class Trajectory:
    """A camera path: ``F`` poses of one image size, plus the metadata camera.json carries.

    Attributes:
        cameras: the poses (``cameras.w2c [F, 4, 4]``, ``cameras.K [F, 3, 3]``).
        name: a label (preset name, file stem, …).
        motion_list: the upstream ``motion_list`` strings, when known.
        extra: other top-level camera.json keys (``type``, ``rotation_deg``, …), kept verbatim
            so that saving writes them back.
        recipe: set by :func:`make_preset`; lets :func:`shorten_against_cloud` regenerate the
            preset with a smaller extent instead of truncating it.
        view_ids: set when loaded from a per-view file (the panorama bank's ``cameras.json``:
            ``{"0000": {"extrinsic", "intrinsic"}, …}``); saving then writes that layout back.
    """

    cameras: Cameras
    name: str = ""
    motion_list: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    recipe: PresetRecipe | None = None
    view_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cameras, Cameras):
            raise InvalidTrajectoryError(f"a Trajectory needs a Cameras batch, got {type(self.cameras).__name__}")
        if len(self.cameras) == 0:
            raise InvalidTrajectoryError("trajectory has 0 frames; give at least one pose")
        if self.motion_list is not None:
            object.__setattr__(self, "motion_list", tuple(str(m) for m in self.motion_list))
        if self.view_ids is not None:
            ids = tuple(str(v) for v in self.view_ids)
            if len(ids) != len(self.cameras):
                raise InvalidTrajectoryError(f"{len(ids)} view ids for {len(self.cameras)} poses")
            object.__setattr__(self, "view_ids", ids)
        object.__setattr__(self, "extra", MappingProxyType(copy.deepcopy(dict(self.extra))))

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def w2c(self) -> torch.Tensor:
        return self.cameras.w2c

    @property
    def K(self) -> torch.Tensor:
        return self.cameras.K

    def keyframe_indices(self, n: int = DEFAULT_NUM_KEYFRAMES) -> np.ndarray:
        """Indices of the ``n`` keyframes the model works on (see :func:`keyframe_indices`)."""
        return keyframe_indices(len(self), n)

    def keyframes(self, n: int = DEFAULT_NUM_KEYFRAMES) -> Cameras:
        """The keyframe poses (see :meth:`keyframe_indices`)."""
        idx = torch.as_tensor(self.keyframe_indices(n), device=self.cameras.device)
        c = self.cameras
        return Cameras(c.w2c[idx], c.K[idx], c.height, c.width)

    def resized(self, height: int, width: int) -> Trajectory:
        """The same trajectory for images of ``height × width`` (K rescaled with the image).

        camera.json intrinsics are in pixels of the *original* image; call this to use a file's
        trajectory at the model's resolution.
        """
        return self.with_cameras(self.cameras.resized(height, width))

    def with_cameras(self, cameras: Cameras, **changes) -> Trajectory:
        """A copy with other poses (``view_ids`` dropped when the count changes)."""
        view_ids = self.view_ids if self.view_ids is not None and len(cameras) == len(self) else None
        return replace(self, cameras=cameras, view_ids=view_ids, **changes)


# ---------------------------------------------------------------------------------------------
# geometry helpers (float64 numpy internally; results go back to torch)
# ---------------------------------------------------------------------------------------------


def _axis_angle(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis) * angle_rad).as_matrix()


def _rotate_about(c2w: np.ndarray, axis: np.ndarray, angle_rad: float, center: np.ndarray) -> np.ndarray:
    """Rotate a camera-to-world pose about the world line ``center + t·axis``."""
    M = np.eye(4)
    R = _axis_angle(axis, angle_rad)
    M[:3, :3] = R
    M[:3, 3] = center - R @ center
    return M @ c2w


def _level_axes(c2w0: np.ndarray, world_up: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World directions (x right, y down, z forward) of the first camera's levelled frame."""
    if world_up is None:
        return c2w0[:3, 0].copy(), c2w0[:3, 1].copy(), c2w0[:3, 2].copy()
    up = np.asarray(world_up, dtype=np.float64).reshape(3)
    if not np.isfinite(up).all() or np.linalg.norm(up) < 1e-12:
        raise InvalidTrajectoryError(f"world_up must be a finite non-zero 3-vector, got {world_up}")
    y = -up / np.linalg.norm(up)
    z = c2w0[:3, 2] - np.dot(c2w0[:3, 2], y) * y
    if np.linalg.norm(z) < 1e-6:
        raise InvalidTrajectoryError(
            "the first camera looks straight along world_up; levelled presets need a horizontal view"
        )
    z = z / np.linalg.norm(z)
    return np.cross(y, z), y, z


def _interp_c2w(c2w: np.ndarray, t_in: np.ndarray, t_out: np.ndarray, position: str = "linear") -> np.ndarray:
    """Interpolate camera-to-world poses: slerp for rotations, linear or cubic for centres."""
    if len(c2w) == 1:
        return np.repeat(c2w, len(t_out), 0)
    rots = Slerp(t_in, Rotation.from_matrix(c2w[:, :3, :3]))(t_out).as_matrix()
    centers = c2w[:, :3, 3]
    if position == "cubic" and len(c2w) >= 3:
        pos = CubicSpline(t_in, centers, axis=0, bc_type="natural")(t_out)
    elif position in ("linear", "cubic"):
        pos = np.stack([np.interp(t_out, t_in, centers[:, i]) for i in range(3)], -1)
    else:
        raise InvalidTrajectoryError(f"unknown position interpolation {position!r}; use 'linear' or 'cubic'")
    out = np.tile(np.eye(4), (len(t_out), 1, 1))
    out[:, :3, :3], out[:, :3, 3] = rots, pos
    return out


def _to_cameras(c2w: np.ndarray, like: Cameras, K: torch.Tensor | None = None) -> Cameras:
    w2c = torch.as_tensor(c2w, dtype=torch.float64)
    w2c = invert_rigid(w2c).to(device=like.device, dtype=like.w2c.dtype)
    if K is None:
        K = like.K[:1].expand(len(c2w), 3, 3).clone()
    return Cameras(w2c, K, like.height, like.width)


# ---------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------


def _preset_c2w(name: str, c2w0: np.ndarray, m: float, n: int, p: dict[str, Any]) -> np.ndarray:
    """``[n, 4, 4]`` camera-to-world poses of a preset (pose 0 = the first camera)."""
    s = np.linspace(0.0, 1.0, n)
    x_l, y_l, z_l = _level_axes(c2w0, p.get("world_up"))
    center = c2w0[:3, 3] + m * c2w0[:3, 2]  # optical-axis point at the median depth
    center_level = c2w0[:3, 3] + m * z_l  # same, on the levelled forward axis
    deg = math.radians
    if name in ("left", "right"):
        sign = 1.0 if name == "left" else -1.0  # +angle about y (down) moves the camera to −x
        return np.stack([_rotate_about(c2w0, y_l, sign * deg(p["angle"]) * f, center) for f in s])
    if name in ("up", "down"):
        sign = -1.0 if name == "up" else 1.0  # −angle about x (right) lifts the camera (−y)
        return np.stack([_rotate_about(c2w0, x_l, sign * deg(p["angle"]) * f, center_level) for f in s])
    if name in ("forward", "backward"):
        sign = 1.0 if name == "forward" else -1.0
        out = np.repeat(c2w0[None], n, 0)
        out[:, :3, 3] += (sign * p["distance"] * m * s)[:, None] * c2w0[:3, 2]
        return out
    if name == "wonder":
        # Walk ahead on the level (the release's wonder_*/traj0: ~4.3 scene units straight ahead,
        # camera level); with rise/pitch (wonder_*/traj1) first rise by rise·m and tilt down by
        # pitch degrees over WONDER_LEAD_IN of the clip, then walk. The view direction is kept;
        # the walk follows the levelled forward axis, so a pitched start view still walks level.
        lead = WONDER_LEAD_IN if (p["rise"] or p["pitch"]) else 0.0
        up_part = np.clip(s / lead, 0.0, 1.0) if lead else np.zeros_like(s)
        walk = np.clip((s - lead) / (1.0 - lead), 0.0, 1.0)
        out = []
        for u, w in zip(up_part, walk):
            pos = c2w0[:3, 3] - p["rise"] * m * u * y_l + p["distance"] * m * w * z_l
            c2w = _rotate_about(c2w0, x_l, -deg(p["pitch"]) * u, c2w0[:3, 3])  # −angle about x tilts down
            c2w[:3, 3] = pos
            out.append(c2w)
        return np.stack(out)
    if name == "pan":  # turn in place about the vertical; +angle turns towards the image's +x
        return np.stack([_rotate_about(c2w0, y_l, deg(p["angle"]) * f, c2w0[:3, 3]) for f in s])
    if name in ("orbit", "eloop"):
        # The release's ellipse, in the first camera's frame: position
        # (rx·sin a, ry·cos a − ry, 0), always looking at (0, 0, m); a = 2π·s closes the loop.
        rx, ry = p["radius_x"] * m, p["radius_y"] * m
        a = 2 * np.pi * s
        pos = np.stack([rx * np.sin(a), ry * np.cos(a) - ry, np.zeros_like(a)], -1)
        out = c2w0 @ look_at_c2w(pos, (0.0, 0.0, m)).numpy()
        out[0] = c2w0  # exact first pose (look_at reproduces it only to rounding)
        return out
    if name == "aerial":
        # The release's aerial: first rise by theta about the horizontal axis through the centre,
        # then turn by phi about the vertical line through the centre; the frame split is
        # proportional to |phi| and |theta|, as in the release.
        theta, phi = p["theta"], p["phi"]
        steps = n - 1
        total = abs(phi) + abs(theta)
        n_phi = int(round(abs(phi) / total * steps)) if total > 0 else 0
        n_theta = steps - n_phi
        out = [c2w0]
        for j in range(n_theta):
            out.append(_rotate_about(c2w0, x_l, -deg(theta) * (j + 1) / n_theta, center_level))
        mid = out[-1]
        for j in range(n_phi):
            out.append(_rotate_about(mid, y_l, deg(phi) * (j + 1) / n_phi, center_level))
        return np.stack(out)
    raise InvalidTrajectoryError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")


def _checked_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    if name not in PRESETS:
        raise InvalidTrajectoryError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    allowed = set(PRESETS[name]) | {"world_up"}
    unknown = set(params) - allowed
    if unknown:
        raise InvalidTrajectoryError(
            f"preset {name!r} does not take {sorted(unknown)}; its parameters are {sorted(allowed)}"
        )
    out: dict[str, Any] = dict(PRESETS[name])
    out["world_up"] = None
    for k, v in params.items():
        if k == "world_up":
            out[k] = None if v is None else tuple(float(x) for x in np.asarray(v, dtype=np.float64).reshape(3))
            continue
        v = float(v)
        if not math.isfinite(v):
            raise InvalidTrajectoryError(f"preset parameter {k} must be finite, got {v}")
        if k in ("radius_x", "radius_y", "distance", "rise") and v < 0:
            raise InvalidTrajectoryError(f"preset parameter {k} must be ≥ 0, got {v}")
        out[k] = v
    return out


def make_preset(
    name: str, first: Cameras, median_depth: float, num_frames: int = DEFAULT_NUM_FRAMES, **params
) -> Trajectory:
    """A preset trajectory starting at ``first`` (one camera).

    Args:
        name: one of :data:`PRESETS` — ``orbit``/``eloop`` (ellipse back to the start, looking at
            the centre), ``up``/``down`` (rotate about the horizontal axis through the centre),
            ``left``/``right`` (about the vertical axis through the centre), ``aerial`` (up by
            ``theta`` then around by ``phi``), ``forward``/``backward`` (along the view axis by
            ``distance``·m), ``pan`` (turn in place by ``angle``), ``wonder`` (the release's
            panorama walk: level, ahead by ``distance``·m; optionally first up by ``rise``·m and
            tilted down by ``pitch`` degrees).
        first: the start camera (``len(first) == 1``); its K and image size are kept.
        median_depth: the scene's median depth ``m`` (world units) seen from ``first``.
        num_frames: number of poses (81 by default, the release's clip length).
        params: overrides of the preset's defaults in :data:`PRESETS`, plus ``world_up``.
    Returns:
        a :class:`Trajectory` whose pose 0 equals ``first``.
    """
    if not isinstance(first, Cameras) or len(first) != 1:
        raise InvalidTrajectoryError("make_preset needs the first camera as a Cameras batch of exactly 1 pose")
    m = float(median_depth)
    if not math.isfinite(m) or m <= 0:
        raise InvalidTrajectoryError(f"median depth must be a finite positive number, got {median_depth}")
    if int(num_frames) < 2:
        raise InvalidTrajectoryError(f"a preset needs at least 2 frames, got {num_frames}")
    p = _checked_params(name, params)
    c2w0 = first.c2w[0].detach().cpu().double().numpy()
    c2w = _preset_c2w(name, c2w0, m, int(num_frames), p)
    cams = _to_cameras(c2w, first)
    # keep the exact input pose for frame 0 (no round trip through inversion)
    w2c = cams.w2c.clone()
    w2c[0] = first.w2c[0].to(w2c.dtype)
    cams = Cameras(w2c, cams.K, cams.height, cams.width)
    recipe = PresetRecipe(name, tuple(sorted(p.items())), m)
    return Trajectory(cams, name=name, recipe=recipe)


def preset_from_controls(
    name: str,
    first: Cameras,
    median_depth: float,
    angle: float = 0.0,
    extent: float = 0.0,
    num_frames: int = DEFAULT_NUM_FRAMES,
    cache_points: ArrayLike | None = None,
) -> tuple[Trajectory, int]:
    """A preset from the TrajectoryBuilder's controls, shortened against the 3D cache.

    The one rule shared by the node and the browser's live preset preview, so both give the
    same path: ``angle > 0`` overrides the preset's ``angle`` (presets that have one), ``extent
    > 0`` its ``radius_x``/``radius_y``/``distance`` (0 keeps the defaults); with
    ``cache_points [N, 3]`` (or their cKDTree) moves through geometry are halved
    (:func:`shorten_against_cloud`).

    Returns ``(trajectory, number of halvings)``.
    """
    if name not in PRESETS:
        raise InvalidTrajectoryError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    defaults = PRESETS[name]
    params: dict[str, float] = {}
    if angle > 0 and "angle" in defaults:
        params["angle"] = float(angle)
    if extent > 0:
        params.update({key: float(extent) for key in ("radius_x", "radius_y", "distance") if key in defaults})
    traj = make_preset(name, first[:1], median_depth, num_frames=num_frames, **params)
    n_points = (
        cache_points.n if isinstance(cache_points, cKDTree) else (0 if cache_points is None else len(cache_points))
    )
    if n_points > 0:
        return shorten_against_cloud(traj, cache_points, median_depth=median_depth)
    return traj, 0


# ---------------------------------------------------------------------------------------------
# custom keyframes
# ---------------------------------------------------------------------------------------------


def _look_at(position: Any, target: Any, up: Any, i: int) -> np.ndarray:
    try:
        return look_at_c2w(position, target, up).numpy()
    except InvalidCameraError as e:
        raise InvalidTrajectoryError(f"keyframe {i}: {e}") from e


def _keyframe_c2w(kf: Any, up: Sequence[float], i: int) -> np.ndarray:
    try:
        return _keyframe_c2w_unchecked(kf, up, i)
    except (TypeError, ValueError, RuntimeError, OverflowError, IndexError) as e:
        if isinstance(e, WorldStereoError):
            raise
        # strings, nulls, ragged lists … from a hand-edited keyframes widget
        raise InvalidTrajectoryError(
            f"keyframe {i}: expected a 4×4 w2c pose, (position, look_at[, up]) or a dict of them; got {kf!r:.80} ({e})"
        ) from None


def _keyframe_c2w_unchecked(kf: Any, up: Sequence[float], i: int) -> np.ndarray:
    if isinstance(kf, Mapping):
        if "w2c" in kf:
            kf = kf["w2c"]
        elif "position" in kf and "look_at" in kf:
            return _look_at(kf["position"], kf["look_at"], kf.get("up", up), i)
        else:
            raise InvalidTrajectoryError(
                f"keyframe {i}: a dict keyframe needs 'w2c', or 'position' and 'look_at' (optional 'up')"
            )
    if isinstance(kf, (tuple, list)) and len(kf) in (2, 3) and np.asarray(kf[0]).shape == (3,):
        return _look_at(kf[0], kf[1], kf[2] if len(kf) == 3 else up, i)
    arr = as_tensor(kf).detach().cpu().double()
    if arr.shape != (4, 4):
        raise InvalidTrajectoryError(
            f"keyframe {i}: expected a 4×4 w2c pose or (position, look_at[, up]), got shape {tuple(arr.shape)}"
        )
    try:
        Cameras(arr[None], torch.eye(3, dtype=torch.float64), 1, 1)  # rigidity check
    except InvalidCameraError as e:
        raise InvalidTrajectoryError(f"keyframe {i}: {e}") from e
    return invert_rigid(arr).numpy()


def from_keyframes(
    keyframes: Sequence[Any],
    K: ArrayLike,
    height: int,
    width: int,
    num_frames: int = DEFAULT_NUM_FRAMES,
    times: Sequence[float] | None = None,
    position_interp: str = "cubic",
    up: Sequence[float] = (0.0, -1.0, 0.0),
    name: str = "keyframes",
) -> Trajectory:
    """A trajectory through user keyframes, resampled to ``num_frames`` poses.

    A keyframe is a ``[4, 4]`` w2c pose, a ``(position, look_at)`` or ``(position, look_at, up)``
    tuple in world coordinates, or a dict with ``w2c`` or ``position``/``look_at``/``up``.
    Rotations are interpolated by piecewise slerp between consecutive keyframes; camera centres
    by a natural cubic spline through the keyframes (``position_interp="cubic"``, smooth, needs
    ≥ 3 keyframes, else linear) or piecewise linearly (``"linear"``, the release's
    ``interpolate_poses``). ``times`` (increasing, any scale) place the keyframes in time;
    default uniform. Every keyframe is hit exactly when its time falls on an output frame.

    Args:
        K: ``[3, 3]`` intrinsics shared by all poses, in pixels of ``height × width``.
        up: default world up direction for look-at keyframes (OpenCV world: ``(0, −1, 0)``).
    """
    if isinstance(keyframes, (str, bytes, Mapping)) or not isinstance(keyframes, Sequence):
        raise InvalidTrajectoryError(f"keyframes must be a list of poses, got {type(keyframes).__name__}")
    if len(keyframes) == 0:
        raise InvalidTrajectoryError("no keyframes given; give at least one pose")
    if int(num_frames) < 1:
        raise InvalidTrajectoryError(f"num_frames must be ≥ 1, got {num_frames}")
    c2w = np.stack([_keyframe_c2w(kf, up, i) for i, kf in enumerate(keyframes)])
    n = len(c2w)
    t_in = np.linspace(0.0, 1.0, n) if times is None else np.asarray(times, dtype=np.float64)
    if t_in.shape != (n,) or (n > 1 and not (np.diff(t_in) > 0).all()):
        raise InvalidTrajectoryError(f"times must be {n} strictly increasing numbers, got {list(np.ravel(t_in))}")
    if n > 1:
        t_in = (t_in - t_in[0]) / (t_in[-1] - t_in[0])
    t_out = np.linspace(0.0, 1.0, int(num_frames))
    out = _interp_c2w(c2w, t_in, t_out, position_interp)
    Kt = as_tensor(K).double()
    if Kt.shape != (3, 3):
        raise InvalidTrajectoryError(f"K must be a single [3, 3] intrinsics matrix, got {tuple(Kt.shape)}")
    w2c = invert_rigid(torch.as_tensor(out))
    return Trajectory(Cameras(w2c, Kt.expand(len(out), 3, 3).clone(), height, width), name=name)


def resample(traj: Trajectory, num_frames: int, position_interp: str = "linear") -> Trajectory:
    """The same path with ``num_frames`` poses (slerp + linear/cubic centres; K of frame 0)."""
    c2w = traj.cameras.c2w.detach().cpu().double().numpy()
    t_in = np.linspace(0.0, 1.0, len(c2w))
    out = _interp_c2w(c2w, t_in, np.linspace(0.0, 1.0, int(num_frames)), position_interp)
    return traj.with_cameras(_to_cameras(out, traj.cameras), recipe=None)


# ---------------------------------------------------------------------------------------------
# obstacle-aware shortening
# ---------------------------------------------------------------------------------------------


def _clearance(traj: Trajectory, tree: cKDTree, k: int, check_poses: int) -> np.ndarray:
    """Per checked pose: mean distance of its camera centre to the ``k`` nearest points."""
    c2w = traj.cameras.c2w.detach().cpu().double().numpy()[1:]  # the start is where we already are
    if len(c2w) == 0:
        return np.full(1, np.inf)
    if len(c2w) < check_poses:
        t = np.linspace(0.0, 1.0, len(c2w))
        c2w = _interp_c2w(c2w, t, np.linspace(0.0, 1.0, check_poses), "linear")
    d, _ = tree.query(c2w[:, :3, 3], k=k)
    return d.reshape(len(c2w), -1).mean(1)


def shorten_against_cloud(
    traj: Trajectory,
    points: ArrayLike,
    median_depth: float | None = None,
    distance_threshold: float = 0.02,
    k: int = 5,
    decay: float = 0.5,
    max_halvings: int = 5,
    check_poses: int = 80,
) -> tuple[Trajectory, int]:
    """Shorten a trajectory whose cameras would pass through the scene's geometry.

    The release's rule (``get_c2w`` in its camera utilities): the clearance of a pose is the mean
    distance of its camera centre to the ``k = 5`` nearest cache points; the poses after the start
    are resampled to ``check_poses = 80`` for the test. While the smallest clearance is below
    ``min(distance_threshold, 0.1 · median_depth)`` the move is reduced by ``decay = 0.5``, at most
    ``max_halvings = 5`` times (the release's ``obs_limit = 4`` loop runs up to 5 times):

    * a preset (``traj.recipe`` set) is regenerated with its extent parameters (angles, radii,
      distances) times ``decay`` — for ``aerial`` only the part that collides (rise or turn);
    * any other trajectory keeps its first ``int(F · decay)`` poses and is resampled back to
      ``F`` poses (slerp + linear centres).

    ``points`` may also be a ``scipy.spatial.cKDTree`` of the points, built once by a caller that
    checks many paths against one cloud (the browser's live preset preview).

    Deterministic. Returns ``(shortened trajectory, number of halvings)``.
    """
    if isinstance(points, cKDTree):
        tree = points
        if tree.n == 0 or tree.m != 3:
            raise InvalidTrajectoryError(
                f"the points' tree must hold [N, 3] points, got {tree.n} of dimension {tree.m}"
            )
    else:
        pts = as_tensor(points).detach().cpu().double().numpy()
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise InvalidTrajectoryError(f"points must be a non-empty [N, 3] array, got shape {tuple(pts.shape)}")
        if not np.isfinite(pts).all():
            raise InvalidTrajectoryError("points contain NaN or inf; drop them before checking obstacles")
        tree = cKDTree(pts)
    if not (0 < decay < 1):
        raise InvalidTrajectoryError(f"decay must be in (0, 1), got {decay}")
    m = median_depth if median_depth is not None else (traj.recipe.median_depth if traj.recipe else None)
    thr = float(distance_threshold) if m is None else min(float(distance_threshold), 0.1 * float(m))
    k = min(int(k), tree.n)
    F = len(traj)
    first = traj.cameras[0]
    current = traj
    clear = _clearance(current, tree, k, check_poses)
    halvings = 0
    while clear.min() < thr and halvings < max_halvings:
        if current.recipe is not None:
            r = current.recipe
            p = r.as_dict()
            if r.name == "aerial":
                total = abs(p["phi"]) + abs(p["theta"])
                n_phi = int(round(abs(p["phi"]) / total * len(clear))) if total > 0 else 0
                hit = clear < thr
                if hit[: len(clear) - n_phi].any():
                    p["theta"] *= decay
                if hit[len(clear) - n_phi :].any():
                    p["phi"] *= decay
            else:
                for key in _EXTENT_PARAMS:
                    if key in p:
                        p[key] *= decay
            p = {k_: v for k_, v in p.items() if k_ in PRESETS[r.name] or k_ == "world_up"}
            current = make_preset(r.name, first, r.median_depth, F, **p)
            current = replace(current, name=traj.name, motion_list=traj.motion_list, extra=traj.extra)
        else:
            keep = max(2, int(len(current) * decay))
            part = current.with_cameras(current.cameras[slice(0, keep)])
            current = resample(part, F)
        halvings += 1
        clear = _clearance(current, tree, k, check_poses)
    return current, halvings


# ---------------------------------------------------------------------------------------------
# camera.json
# ---------------------------------------------------------------------------------------------


def _as_matrix_stack(value: Any, key: str, size: int, path: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise CorruptFileError(f"{path}: '{key}' is not a numeric array ({e})") from e
    if arr.ndim == 2 and key == "intrinsic":
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (size, size):
        want = f"F × {size} × {size}"
        raise CorruptFileError(
            f"{path}: '{key}' must be a list of {size}×{size} matrices ({want}), got shape {arr.shape}"
        )
    return arr


def _infer_size(K: np.ndarray, height: int | None, width: int | None, data: Mapping[str, Any]) -> tuple[int, int]:
    # Priority: explicit arguments, then the file's own "height"/"width", then the principal
    # point (upstream files centre it: W = 2·cx, H = 2·cy).
    h = height if height is not None else data.get("height")
    w = width if width is not None else data.get("width")
    if h is None:
        h = int(round(2 * float(K[0, 1, 2])))
    if w is None:
        w = int(round(2 * float(K[0, 0, 2])))
    return int(h), int(w)


# Largest camera.json read: 10,000 poses at full float64 precision take about 6 MiB.
MAX_CAMERA_JSON_BYTES = 64 * 2**20


def load_camera_json(path: str | os.PathLike, height: int | None = None, width: int | None = None) -> Trajectory:
    """Read a camera.json in the upstream format.

    ``{"extrinsic": F×4×4 w2c (OpenCV), "intrinsic": F×3×3 (or one 3×3) in pixels of the
    original image, optional "motion_list", "width", "height", …}``. Other top-level keys are kept
    in ``Trajectory.extra``. The panorama bank's per-view layout ``{"0000": {"extrinsic": 4×4,
    "intrinsic": 3×3}, …}`` is read too (views in key order, ids kept in ``view_ids``).

    The image size is ``height``/``width`` when given, else the file's ``height``/``width``
    keys, else inferred from the principal point as ``(round(2·cy), round(2·cx))``. Values are
    read as float64 so that saving writes back exactly what was read.

    Raises:
        InvalidFileError: the file cannot be read; CorruptFileError: not JSON, missing keys, wrong shapes, mismatched counts,
            non-rigid poses or unusable intrinsics (:class:`EmptyCameraJsonError` for 0 poses).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CAMERA_JSON_BYTES + 1)
    except OSError as e:
        raise InvalidFileError(f"cannot read camera file {path}: {e.strerror or e}") from e
    if len(raw) > MAX_CAMERA_JSON_BYTES:
        raise CorruptFileError(
            f"{path} is larger than {MAX_CAMERA_JSON_BYTES // 2**20} MiB; a camera.json of even 10,000 poses is far "
            "smaller — is it the right file?"
        )
    try:
        data = safe_json.loads(raw, what=path)
    except MalformedJsonError as e:
        raise CorruptFileError(f"{e}; it must be an upstream camera.json") from None
    if not isinstance(data, dict):
        raise CorruptFileError(
            f"{path}: expected a JSON object with 'extrinsic' and 'intrinsic', got {type(data).__name__}"
        )

    view_ids = None
    if (
        "extrinsic" not in data
        and "intrinsic" not in data
        and data
        and all(isinstance(v, dict) and "extrinsic" in v for v in data.values())
    ):
        view_ids = tuple(sorted(data))
        try:
            ext_v = [data[v]["extrinsic"] for v in view_ids]
            int_v = [data[v]["intrinsic"] for v in view_ids]
        except KeyError as e:
            raise CorruptFileError(f"{path}: a view is missing its {e.args[0]!r} entry") from e
        data = {"extrinsic": ext_v, "intrinsic": int_v}
    missing = [k for k in ("extrinsic", "intrinsic") if k not in data]
    if missing:
        raise CorruptFileError(
            f"{path}: missing key(s) {missing}; an upstream camera.json has 'extrinsic' (F×4×4 w2c) "
            "and 'intrinsic' (F×3×3 in pixels)"
        )
    if isinstance(data["extrinsic"], list) and len(data["extrinsic"]) == 0:
        raise EmptyCameraJsonError(f"{path}: 'extrinsic' holds 0 poses; a trajectory needs at least one")
    E = _as_matrix_stack(data["extrinsic"], "extrinsic", 4, path)
    K = _as_matrix_stack(data["intrinsic"], "intrinsic", 3, path)
    if len(E) == 0:
        raise EmptyCameraJsonError(f"{path}: 'extrinsic' holds 0 poses; a trajectory needs at least one")
    if len(K) not in (1, len(E)):
        raise CorruptFileError(
            f"{path}: {len(E)} extrinsics but {len(K)} intrinsics; give one per pose (or one shared)"
        )
    motion = data.get("motion_list")
    if motion is not None and (not isinstance(motion, list) or not all(isinstance(m, str) for m in motion)):
        raise CorruptFileError(f"{path}: 'motion_list' must be a list of strings")
    for key in ("height", "width"):
        v = data.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 or v != int(v)):
            raise CorruptFileError(f"{path}: '{key}' must be a positive integer, got {v!r}")
    h, w = _infer_size(K, height, width, data)
    try:
        cams = Cameras(torch.from_numpy(E), torch.from_numpy(K), h, w)
    except WorldStereoError as e:
        raise CorruptFileError(f"{path}: {e}") from e
    extra = {k: v for k, v in data.items() if k not in ("extrinsic", "intrinsic", "motion_list", "height", "width")}
    return Trajectory(
        cams, name=Path(path).parent.name or Path(path).stem, motion_list=motion, extra=extra, view_ids=view_ids
    )


def save_camera_json(path: str | os.PathLike, trajectory: Trajectory) -> None:
    """Write ``trajectory`` as an upstream camera.json, atomically (temp file + ``os.replace``).

    Writes ``extrinsic`` (F×4×4 w2c), ``intrinsic`` (F×3×3), ``width``, ``height``, the
    ``motion_list`` when known and the preserved ``extra`` keys. A trajectory read from a
    per-view bank file is written back in that layout. Floats are written with full precision,
    so :func:`load_camera_json` gives back identical arrays.
    """
    if not isinstance(trajectory, Trajectory):
        raise InvalidTrajectoryError(f"save_camera_json needs a Trajectory, got {type(trajectory).__name__}")
    path = os.fspath(path)
    cams = trajectory.cameras
    E = cams.w2c.detach().cpu().double().numpy().tolist()
    K = cams.K.detach().cpu().double().numpy().tolist()
    if trajectory.view_ids is not None:
        data: dict[str, Any] = {v: {"intrinsic": k, "extrinsic": e} for v, k, e in zip(trajectory.view_ids, K, E)}
    else:
        data = dict(trajectory.extra)
        if trajectory.motion_list is not None:
            data["motion_list"] = list(trajectory.motion_list)
        data.update(extrinsic=E, intrinsic=K, width=cams.width, height=cams.height)
    atomic.write_text(path, json.dumps(data))
