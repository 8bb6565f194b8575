"""Small synthetic GeoTIFF scenes for the archive-to-map tests: 4 bands, uint16, a nodata border.

Each scene is a grid of ``block x block`` pixel squares, each square one of three land-cover
classes with its own spectral signature (plus noise); a label raster on the same grid holds the
class index of every pixel. The left ``block`` columns are nodata (0, every band), and the top
``top_nodata`` rows too, so tiling at ``size = block`` skips one column of chips and keeps the
top row with a nodata fraction of ``top_nodata / block``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["forest", "water", "urban"]
SIGNATURES = np.array(
    [[400, 700, 500, 3500], [900, 600, 300, 200], [2200, 2300, 2400, 2600]], dtype=np.float64
)


def block_classes(rows: int, cols: int) -> np.ndarray:
    """Class index of each ``(block_row, block_col)``."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (r * 2 + c) % len(CLASSES)


def write_scene(
    path: Path,
    crs: str,
    transform: object,
    *,
    blocks: int = 5,
    block: int = 32,
    top_nodata: int = 4,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``path`` (4-band uint16 GeoTIFF, nodata 0) and ``path``'s label raster; returns both paths."""
    import rasterio

    rng = np.random.default_rng(seed)
    side = blocks * block
    cls = np.kron(block_classes(blocks, blocks), np.ones((block, block), dtype=np.int64))
    img = SIGNATURES[cls].transpose(2, 0, 1) + rng.normal(0, 150, (4, side, side))
    img = np.clip(img, 1, 65535).astype(np.uint16)
    img[:, :, :block] = 0
    img[:, :top_nodata, :] = 0
    labels = cls.astype(np.uint8)
    labels[:, :block] = 255
    profile = dict(driver="GTiff", width=side, height=side, crs=crs, transform=transform)
    with rasterio.open(path, "w", count=4, dtype="uint16", nodata=0, **profile) as dst:
        dst.write(img)
    lab = path.with_name(path.stem + "_labels.tif")
    with rasterio.open(lab, "w", count=1, dtype="uint8", nodata=255, **profile) as dst:
        dst.write(labels[None])
    return path, lab


def two_scenes(folder: Path, **kw: object) -> list[tuple[Path, Path]]:
    """A UTM scene (EPSG:32633, 10 m pixels) and a WGS84 scene (EPSG:4326, 1e-4 degree pixels)."""
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_scene(
            folder / "utm_scene.tif", "EPSG:32633", from_origin(500000, 4500000, 10, 10), seed=1, **kw
        ),
        write_scene(
            folder / "wgs84_scene.tif", "EPSG:4326", from_origin(12.0, 41.0, 1e-4, 1e-4), seed=2, **kw
        ),
    ]


def fake_run(run: Path, root: Path, *, frozen: bool = False, seed: int = 0, **data: object) -> Path:
    """A run directory as the loop leaves it after round 0 (config, classes, a checkpoint of a
    seeded ``hssal_small_cnn``), without running the loop: what export and predict read."""
    import torch
    from safetensors.torch import save_file

    from hssal_ray.config import config_from_dict, config_to_yaml
    from hssal_ray.models import model_from_config

    ssl = {"model": "hssal_small_cnn", "finetune": "frozen" if frozen else "full", "eval_batch_size": 16}
    cfg = config_from_dict(
        {
            "data": {"root": str(root), "bands": 3, "image_size": 32, **data},
            "ssl": ssl,
            "loop": {"run_dir": str(run.parent), "name": run.name},
        }
    )
    torch.manual_seed(seed)
    if frozen:
        from hssal_ray.frozen.head import build_head

        torch.manual_seed(0)
        backbone = model_from_config(cfg, num_classes=1).backbone
        dim = int(backbone(torch.zeros(1, 3, 32, 32)).shape[1])
        torch.manual_seed(seed)
        head = build_head(cfg, dim, len(CLASSES), stats=(torch.randn(dim) * 0.1, torch.rand(dim) + 0.5))
        state = head.state_dict()
    else:
        state = model_from_config(cfg, len(CLASSES), with_weights=False).state_dict()
    ckpt = run / "round_000" / "checkpoint"
    ckpt.mkdir(parents=True)
    for name in ("ema.safetensors", "model.safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt / name))
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    (run / "classes.json").write_text('["forest", "water", "urban"]')
    return run
