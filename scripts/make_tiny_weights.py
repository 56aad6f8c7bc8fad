"""Write tiny random WorldStereo / Wan weights into a ComfyUI base directory's model folders.

The files have the real layouts and go where users put the real ones, so workflows run unchanged
(same loaders, tiny configs) on a CPU in seconds — CI uses them to execute the example workflows:

    models/worldstereo/worldstereo-camera/        config.json + model.safetensors
    models/worldstereo/worldstereo-memory/        ...
    models/worldstereo/worldstereo-memory-dmd/    ...
    models/text_encoders/umt5_xxl_tiny.safetensors   (UMT5 keys + embedded SentencePiece tokenizer)
    models/clip_vision/clip_vision_h_tiny.safetensors
    models/vae/wan_2.1_vae_tiny.safetensors

Usage:  python scripts/make_tiny_weights.py <comfy base dir> [--variants camera memory dmd] [--seed 0]
(the base dir is ComfyUI's --base-directory, or the ComfyUI folder itself; ``models/`` is created).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_models: test support, not runtime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base_dir", type=Path, help="ComfyUI base directory (models/ is written inside it)")
    p.add_argument("--variants", nargs="+", default=["camera", "memory", "dmd"], choices=["camera", "memory", "dmd"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from tiny_models import write_tiny_models

    written = write_tiny_models(args.base_dir / "models", variants=args.variants, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
