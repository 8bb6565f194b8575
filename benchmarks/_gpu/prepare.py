"""``--prepare``: the folder the GPU machine gets (resized UCM images, Lite0 weights, a manifest)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import _git_commit
from benchmarks._gpu.sizes import (
    _IMAGE_EXT,
    IMAGES_DIR,
    LITE0,
    MANIFEST,
    WEIGHTS_FILE,
    _dist_version,
)


def prepare(
    dest: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    per_class: int = 100,
    size: int = 224,
    quality: int = 85,
    max_mib: float = 48.0,
) -> dict[str, Any]:
    """Copy a UCM-layout image tree (resized JPEGs) and the Lite0 weights into ``dest`` for the GPU machine.

    Images keep their relative paths (``class/name``; a non-JPEG source gets a ``.jpg`` name), so the
    product's seeded split is the one of the source. The weights are the packaged ImageNet
    EfficientNet-Lite0 (``ssl.weights: package:efficientnet_lite0``) mapped onto timm's layout and
    checked tensor by tensor (:func:`hssal_ray.packaged_weights.packaged_backbone_state`), written as
    safetensors: the GPU machine lacks the package, and a local file loads through
    :func:`hssal_ray.models.load_weights`.

    Raises:
        DataError: No class folders with images under ``source``, or the result exceeds ``max_mib``.
    """
    from PIL import Image
    from safetensors.torch import save_file

    from hssal_ray.data.decode import decode_image
    from hssal_ray.errors import DataError
    from hssal_ray.packaged_weights import PACKAGED, packaged_backbone_state

    src, out = Path(source), Path(dest)
    classes = (
        sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
        if src.is_dir()
        else []
    )
    files = {
        c: sorted(f for f in (src / c).iterdir() if f.suffix.lower() in _IMAGE_EXT)[:per_class]
        for c in classes
    }
    files = {c: f for c, f in files.items() if f}
    if not files:
        raise DataError(f"no class folders with images under {src} (expected SOURCE/<class>/<image>)")
    if (out / IMAGES_DIR).exists():
        shutil.rmtree(out / IMAGES_DIR)
    total = 0
    for c, fs in files.items():
        (out / IMAGES_DIR / c).mkdir(parents=True, exist_ok=True)
        for f in fs:
            chw = decode_image(f.read_bytes(), bands=3, size=size)  # the product's decode + resize
            target = out / IMAGES_DIR / c / (f.stem + ".jpg")
            Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(
                target, "JPEG", quality=quality
            )
            total += target.stat().st_size
    state = packaged_backbone_state(f"package:{LITE0}", LITE0)
    wpath = out / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in state.items()}, str(wpath))
    wbytes = wpath.stat().st_size
    mib = (total + wbytes) / 2**20
    if mib > max_mib:
        raise DataError(
            f"{out} holds {mib:.1f} MiB (limit {max_mib}): use fewer --per-class images or a lower --quality"
        )
    pkg = PACKAGED[LITE0].pip_name
    manifest = {
        "source": str(src.resolve()),
        "classes": len(files),
        "images": sum(len(f) for f in files.values()),
        "per_class": per_class,
        "image_size": size,
        "jpeg_quality": quality,
        "image_bytes": total,
        "weights": {
            "file": WEIGHTS_FILE,
            "bytes": wbytes,
            "sha256": hashlib.sha256(wpath.read_bytes()).hexdigest(),
            "tensors": len(state),
            "from": f"package:{LITE0} ({pkg} {_dist_version(pkg)}), mapped onto timm's {LITE0}",
        },
        "total_mib": round(mib, 2),
        "git_commit": _git_commit(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
