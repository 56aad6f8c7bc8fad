"""Errors users can act on, named by what went wrong.

Every problem the user can fix raises a subclass of :class:`WorldStereoError` whose message
says what was wrong and what to do about it::

    WorldStereoError
    ├── InvalidInputError (ValueError)      a value handed in that cannot be used
    │   ├── ShapeMismatchError              shapes, sizes or counts that do not agree
    │   ├── InvalidOptionError              a setting out of range or not one of its choices
    │   │   └── InvalidChoiceError          a name that is not one of its option's choices
    │   ├── MissingInputError               a required input not given / not connected
    │   ├── AlignmentFailedError            geometry that cannot be aligned (too few or
    │   │                                   degenerate correspondences, no overlap)
    │   ├── InvalidCameraError              intrinsics / extrinsics that are no camera
    │   ├── InvalidDepthError               depth with NaN/inf/negative values
    │   ├── InvalidImageError               images of the wrong range, layout or aspect
    │   ├── InvalidPointCloudError          empty or non-finite point clouds
    │   └── InvalidTrajectoryError          trajectories that cannot be planned or used
    ├── InvalidFileError (ValueError)       a file or folder that cannot be used
    │   ├── MissingFileError                a named file or folder does not exist
    │   ├── CorruptFileError                unreadable, truncated or not the documented format
    │   │   └── MalformedJsonError          JSON that is not parsed (syntax, depth, NaN, huge numbers)
    │   ├── CheckpointMismatchError         weights / config that do not fit the model
    │   ├── UnsafeFileError                 refused: pickles (loading them can run code)
    │   ├── UnsafePathError                 a path outside ComfyUI's input/output/model folders
    │   └── OutputPathError                 an output path that cannot be written as asked
    └── ModelOutOfMemoryError (MemoryError) the device ran out of memory

The input and file errors derive from ``ValueError`` so generic callers that catch
bad-argument errors keep working; running out of memory is not a bad argument, so
:class:`ModelOutOfMemoryError` is a ``MemoryError``.

The names of earlier versions (``MemoryBankError``, ``CheckpointError``, ``AlignmentError``,
…, named after the module that raised them) still import, with a ``DeprecationWarning``, as
the nearest class above that covers everything they were raised for.
"""

from __future__ import annotations

import warnings


class WorldStereoError(Exception):
    """Base class of every error raised for a problem the user can fix."""


# --- values handed in --------------------------------------------------------------------------


class InvalidInputError(WorldStereoError, ValueError):
    """A value handed in that cannot be used (wrong type, empty, out of its domain)."""


class ShapeMismatchError(InvalidInputError):
    """Shapes, sizes or counts that do not agree (frames vs cameras, depth vs image, …)."""


class InvalidOptionError(InvalidInputError):
    """A setting out of its range or not one of its choices (mode, threshold, preset name, …)."""


class InvalidChoiceError(InvalidOptionError):
    """A value that is not one of an option's choices (a dtype, sampler or mode name)."""


class MissingInputError(InvalidInputError):
    """A required input that was not given or not connected (a model, a cache, an encoder, …)."""


class AlignmentFailedError(InvalidInputError):
    """Point sets or depth maps that cannot be aligned: too few or degenerate correspondences,
    no overlap between a clip and the cache."""


class InvalidCameraError(InvalidInputError):
    """Intrinsics or extrinsics that cannot describe a camera (zero focal, non-rigid pose, …)."""


class InvalidDepthError(InvalidInputError):
    """Depth maps with NaN/inf/negative values or a size that does not match the image."""


class InvalidImageError(InvalidInputError):
    """Images of the wrong shape, range or aspect (e.g. a panorama that is not 2:1)."""


class InvalidPointCloudError(InvalidInputError):
    """Empty clouds, mismatched point/colour counts, non-finite coordinates."""


class InvalidTrajectoryError(InvalidInputError):
    """Trajectories of zero frames, unknown presets, bad keyframes."""


# --- files -------------------------------------------------------------------------------------


class InvalidFileError(WorldStereoError, ValueError):
    """A file or folder that cannot be used."""


class MissingFileError(InvalidFileError):
    """A named file or folder does not exist (weights not downloaded, wrong path)."""


class CorruptFileError(InvalidFileError):
    """A file that cannot be read as what it claims to be: truncated, not valid JSON /
    safetensors, not the documented format (camera.json, saved memory bank, …)."""


class CheckpointMismatchError(InvalidFileError):
    """Weights or a config that read fine but do not fit the model (missing or unexpected keys,
    wrong tensor shapes, an unsupported configuration, the wrong model)."""


class MalformedJsonError(CorruptFileError):
    """JSON text that is not parsed: bad syntax, nesting deeper than the format needs, numbers
    with too many digits, or NaN / Infinity / out-of-range values."""


class UnsafeFileError(InvalidFileError):
    """A file refused for safety: pickles, whose loading can run code."""


class UnsafePathError(InvalidFileError):
    """A file or folder input that names something outside the folders the pack may read or write
    (ComfyUI's input, output and model folders), checked after resolving symlinks."""


class OutputPathError(InvalidFileError):
    """An output path that cannot be written as asked (a folder where a file is wanted, an
    existing folder that is not ours to replace, …)."""


# --- resources ---------------------------------------------------------------------------------


class ModelOutOfMemoryError(WorldStereoError, MemoryError):
    """The device ran out of memory; the message says what to lower or offload."""


# --- names of earlier versions -----------------------------------------------------------------

#: Module-named classes of earlier versions → the class that now covers what they were raised for.
_DEPRECATED = {
    "AlignmentError": InvalidInputError,
    "CameraJsonError": InvalidFileError,
    "CheckpointError": WorldStereoError,
    "EvaluationError": WorldStereoError,
    "ExportError": WorldStereoError,
    "MemoryBankError": WorldStereoError,
    "ModelInputError": InvalidInputError,
    "ReconstructionError": WorldStereoError,
    "RenderError": InvalidInputError,
    "SyntheticSceneError": InvalidInputError,
}


def __getattr__(name: str) -> type[WorldStereoError]:
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(
            f"worldstereo_core.errors.{name} is deprecated; raise or catch the class named after the problem "
            f"(it is now {new.__name__}; see the errors module doc)",
            DeprecationWarning,
            stacklevel=2,
        )
        return new
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "WorldStereoError",
    "InvalidInputError",
    "ShapeMismatchError",
    "InvalidOptionError",
    "InvalidChoiceError",
    "MissingInputError",
    "AlignmentFailedError",
    "InvalidCameraError",
    "InvalidDepthError",
    "InvalidImageError",
    "InvalidPointCloudError",
    "InvalidTrajectoryError",
    "InvalidFileError",
    "MissingFileError",
    "CorruptFileError",
    "CheckpointMismatchError",
    "MalformedJsonError",
    "UnsafeFileError",
    "UnsafePathError",
    "OutputPathError",
    "ModelOutOfMemoryError",
]
