"""The example workflows' inputs: copied into ComfyUI's input folder when the pack loads.

The shipped workflows open with *Load Image* of a file in ``example_inputs/`` (an image of
the WorldStereo release and a panorama stitched from its example bank; see
``example_inputs/NOTICE``). Load Image lists the files of ComfyUI's input folder, so the pack
puts its examples there once, under names that say whose they are; a file of the same name
that is already there (the user's own, or an earlier copy) is never replaced.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid

EXAMPLE_INPUTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example_inputs")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def example_input_files() -> list[str]:
    """Names of the example inputs the pack ships (image files of ``example_inputs/``)."""
    if not os.path.isdir(EXAMPLE_INPUTS_DIR):
        return []
    return sorted(f for f in os.listdir(EXAMPLE_INPUTS_DIR) if f.lower().endswith(IMAGE_SUFFIXES))


def install_example_inputs(input_dir: str | None = None) -> list[str]:
    """Copy every example input that ``input_dir`` (default: ComfyUI's input folder) lacks.

    Returns the names copied. Each copy is written under a temporary name and then linked to
    its final name, which fails if the name exists: a file put there meanwhile is kept, and a
    half-copied file never appears under the final name.
    """
    if input_dir is None:
        import folder_paths

        input_dir = folder_paths.get_input_directory()
    copied = []
    for name in example_input_files():
        dst = os.path.join(input_dir, name)
        if os.path.lexists(dst):
            continue
        try:
            os.makedirs(input_dir, exist_ok=True)
            tmp = os.path.join(input_dir, f".{name}.{uuid.uuid4().hex}.partial")
            shutil.copyfile(os.path.join(EXAMPLE_INPUTS_DIR, name), tmp)
            try:
                os.link(tmp, dst)  # atomic, and never replaces an existing file
            except FileExistsError:
                pass
            except OSError:  # no hard links on this file system
                if not os.path.lexists(dst):
                    os.replace(tmp, dst)
            else:
                copied.append(name)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        except OSError as exc:  # a read-only input folder must not stop the pack from loading
            logging.getLogger("worldstereo").warning("could not copy the example input %s: %s", name, exc)
    return copied
