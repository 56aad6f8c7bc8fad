"""Stitch the example panorama shipped in ``example_inputs/`` from the release's 27-view bank.

    python scripts/make_example_panorama.py PANO_BANK_DIR [OUT.jpg]

``PANO_BANK_DIR`` is an upstream ``examples/panorama/<id>/pano_bank`` folder of
FuchengSu/WorldStereo (Apache-2.0): ``cameras.json`` (per-view w2c + K) and ``images/0000..0026.png``
(832×480). The views are blended back into an equirectangular panorama with our own
:func:`worldstereo_core.panorama.perspective_to_equirect`, at the cameras the file gives.

The bank sees latitudes up to 26.57° + 45° = 71.57° (its views are tilted by atan ½ and have a
90° vertical field of view), so the two polar caps are not covered. They are filled with each
column's nearest covered colour, blurred along the rows, so the file is a plain 2:1 panorama
(the depth of the caps is then of little value, which is also true of the release's bank).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from worldstereo_core.panorama import perspective_to_equirect  # noqa: E402
from worldstereo_core.trajectory import load_camera_json  # noqa: E402

PANO_HEIGHT = 1024  # 2048×1024: ~326 px per radian, above the bank's ~240 (fy), so nothing is lost
JPEG_QUALITY = 88  # keeps the file under ~1 MB


def fill_polar_caps(pano: torch.Tensor, weight: torch.Tensor, min_weight: float = 0.02) -> torch.Tensor:
    """``pano [H, W, 3]`` with the rows no view sees well filled.

    Pixels whose blend weight is below ``min_weight`` (the views' feathered borders, where a
    colour comes from a sliver of one view) take, per column, the colour of the nearest
    well-covered pixel above or below; the filled rows are then blurred along the longitude
    (wrapping around, kernel W/16) and faded towards the pole to their mean colour, so the
    caps read as a plain ceiling and floor without streaks."""
    H, W = pano.shape[:2]
    good = weight >= min_weight
    out = pano.clone()
    rows = torch.arange(H)[:, None].expand(H, W)
    big = H * 4
    # nearest good row at or above / below each pixel, per column
    above = torch.where(good, rows, torch.full_like(rows, -big)).cummax(0).values
    below = torch.where(good, rows, torch.full_like(rows, big)).flip(0).cummin(0).values.flip(0)
    use_above = (rows - above) <= (below - rows)
    src = torch.where(use_above, above, below).clamp(0, H - 1)
    cols = torch.arange(W)[None].expand(H, W)
    filled = pano[src, cols]
    out = torch.where(good[..., None], pano, filled)
    cap = ~good
    blur = max(3, W // 16) | 1
    k = torch.ones(1, 1, blur, dtype=out.dtype) / blur
    x = out.permute(0, 2, 1).reshape(H * 3, 1, W)
    x = torch.nn.functional.pad(x, (blur // 2, blur // 2), mode="circular")
    smooth = torch.nn.functional.conv1d(x, k).reshape(H, 3, W).permute(0, 2, 1)
    # fade to each row's mean colour by the distance (in rows) from the covered band
    dist = torch.minimum((rows - above).abs(), (below - rows).abs()).float()
    fade = (dist / (0.25 * H)).clamp(0, 1)[..., None]
    smooth = smooth * (1 - fade) + smooth.mean(1, keepdim=True) * fade
    return torch.where(cap[..., None], smooth, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pano_bank", type=Path)
    parser.add_argument("out", type=Path, nargs="?", default=REPO_ROOT / "example_inputs" / "worldstereo_panorama.jpg")
    args = parser.parse_args(argv)

    bank = load_camera_json(args.pano_bank / "cameras.json")
    names = [f"{v}.png" for v in bank.view_ids]
    views = np.stack([np.asarray(Image.open(args.pano_bank / "images" / n).convert("RGB")) for n in names])
    if views.shape[1:3] != (bank.cameras.height, bank.cameras.width):
        raise SystemExit(
            f"views are {views.shape[1:3]} but cameras.json is for {bank.cameras.height}×{bank.cameras.width}"
        )
    imgs = torch.from_numpy(views).float() / 255.0
    pano, weight = perspective_to_equirect(imgs, bank.cameras.w2c, bank.cameras.K, PANO_HEIGHT, 2 * PANO_HEIGHT)
    pano = fill_polar_caps(pano, weight)
    out = (pano.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(args.out, quality=JPEG_QUALITY, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {out.shape[1]}×{out.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
