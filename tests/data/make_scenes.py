"""Test helpers for the archive-to-map tests: the synthetic scenes (:mod:`hssal_ray.data.synthetic_scenes`)
and a run directory as the loop leaves it (:func:`fake_run`)."""

from __future__ import annotations

from pathlib import Path

from hssal_ray.data.synthetic_scenes import CLASSES, SIGNATURES, block_classes, two_scenes, write_scene

__all__ = ["CLASSES", "SIGNATURES", "block_classes", "two_scenes", "write_scene", "fake_run"]


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
