"""Export a run's classifier: ``python -m hssal_ray.export RUN --out DIR [--round N]``.

``DIR`` holds everything needed to run the model elsewhere, without the run directory or Ray:

* ``model.safetensors``: the evaluation weights (``ssl.eval_model``) of the whole classifier. For a
  frozen-encoder run that is the encoder (its packaged or hub weights) *and* the trained head
  (feature normalisation and standardisation included), so the file stands alone.
* ``model.json``: backbone, head, classes, the input (size, bands, ``band_select``,
  ``value_range``, the 8-bit scaling rule, mean/std), the encoder package for frozen runs, where it
  came from (run, round, weights, ``science_sha``, the round's test accuracy) and the ONNX parity.
* ``model.onnx``: the same network (input ``image``: ``(N, bands, size, size)`` float32 normalised
  as in ``model.json``; output ``logits``), exported with ``torch.onnx.export(dynamo=True)`` (the
  torch.export-based exporter, the default since torch 2.9; the TorchScript one is deprecated) and
  checked against the torch model with onnxruntime on a batch of the run's own images: the largest
  absolute difference of the logits is recorded, and above ``PARITY_ATOL + PARITY_RTOL * max|logit|``
  (or if a class differs) the export fails and writes nothing.
* ``classify.py``: :data:`SNIPPET`, the 20-line reader (numpy, Pillow, onnxruntime, rasterio) that
  turns a chip into a class and a confidence the way the loop's decoder does.

:func:`load_exported` rebuilds the torch model from ``model.json`` + ``model.safetensors`` with
this package (no run directory). The model is :func:`hssal_ray.run_model.eval_model`, the one
:mod:`hssal_ray.predict` runs too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hssal_ray import _io
from hssal_ray.errors import HSSALError
from hssal_ray.run_model import FrozenClassifier, eval_model, preprocess_spec, run_images, run_model

__all__ = [
    "export",
    "load_exported",
    "SNIPPET",
    "PARITY_ATOL",
    "main",
]

log = logging.getLogger(__name__)

FORMAT = "hssal_ray.classifier"
FORMAT_VERSION = 1
PARITY_ATOL = 1e-3
PARITY_RTOL = 1e-4
"""An export is accepted when ONNX Runtime's and torch's logits differ by at most
``PARITY_ATOL + PARITY_RTOL * max|logit|`` on the check batch and give the same classes."""
PARITY_IMAGES = 8
ONNX_OPSET = 18

SNIPPET = '''\
"""Classify chips with an exported hssal_ray model: python classify.py EXPORT_DIR CHIP.tif ..."""
import json, sys
import numpy as np, onnxruntime as ort, rasterio
from PIL import Image

d = sys.argv[1]
meta, session = json.load(open(f"{d}/model.json")), ort.InferenceSession(f"{d}/model.onnx")
inp = meta["input"]

def classify(chip):  # (bands, H, W) array as rasterio reads it -> (class name, confidence)
    x = chip[[b - 1 for b in inp["band_select"]]] if inp["band_select"] else chip
    if x.dtype != np.uint8:  # the loop's 8-bit scaling: fixed range, else a 2-98 percentile stretch
        lo, hi = np.array(inp["value_range"] or np.percentile(x, [2, 98], (1, 2)), float)[..., None, None]
        x = np.rint(np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    x = np.stack([np.asarray(Image.fromarray(b).resize((inp["size"],) * 2, Image.BILINEAR)) for b in x])
    x = (x / 255 - np.array(inp["mean"])[:, None, None]) / np.array(inp["std"])[:, None, None]
    logits = session.run(None, {"image": x[None].astype(np.float32)})[0][0]
    p = np.exp(logits - logits.max())
    return meta["classes"][int(p.argmax())], float(p.max() / p.sum())

for path in sys.argv[2:]:
    with rasterio.open(path) as src:
        print(path, *classify(src.read()), sep="\\t")
'''
"""The stand-alone reader written next to an export as ``classify.py`` (and shown in the README)."""


def _package(cfg: Any) -> dict[str, Any] | None:
    from importlib import metadata

    from hssal_ray.packaged_weights import packaged

    pw = packaged(cfg.ssl.weights)
    if pw is None:
        return None
    try:
        version = metadata.version(pw.pip_name)
    except metadata.PackageNotFoundError:
        version = None
    return {"weights": cfg.ssl.weights, "package": pw.pip_name, "version": version}


def _test_accuracy(run_dir: str, r: int) -> float | None:
    from hssal_ray.loop.metrics import read_metrics

    try:
        rows = [m for m in read_metrics(run_dir) if m.get("round") == r]
    except HSSALError:
        return None
    return rows[-1].get("test_accuracy") if rows else None


def _onnx(model: nn.Module, path: str, x: torch.Tensor) -> tuple[float, float]:
    """Export ``model`` to ONNX at ``path``; returns the largest absolute logit difference on ``x``
    and the largest absolute logit (refuses, writing nothing, above the tolerance)."""
    import os
    import tempfile
    import warnings

    import onnxruntime as ort

    for name in ("onnxscript", "onnx_ir", "torch.onnx"):  # per-pass INFO lines otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model,
            (x,),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    with tempfile.TemporaryDirectory() as tmp:
        prog.save(os.path.join(tmp, "model.onnx"), external_data=False)
        with open(os.path.join(tmp, "model.onnx"), "rb") as f:
            data = f.read()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).float().numpy()
    diff, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    if not diff <= PARITY_ATOL + PARITY_RTOL * scale or (got.argmax(1) != want.argmax(1)).any():
        raise HSSALError(
            f"the ONNX export differs from the torch model by {diff:.3g} (logits up to {scale:.3g}); "
            "nothing written"
        )
    _io.atomic_write_bytes(path, data)
    return diff, scale


class _quiet:
    """Silence the exporter's progress prints (it writes them to stdout)."""

    def __enter__(self) -> None:
        import contextlib
        import io

        self._cm = contextlib.redirect_stdout(io.StringIO())
        self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def export(run_dir: str, out: str, *, round_idx: int | None = None, sample: np.ndarray | None = None) -> dict:
    """Write ``model.safetensors``, ``model.onnx``, ``model.json`` and ``classify.py`` into ``out``.

    Args:
        run_dir: The run directory.
        out: Output folder (created).
        round_idx: Round to export (default: the last trained one).
        sample: ``(N, bands, size, size)`` float32 inputs for the parity check (default: up to 8
            of the run's images, decoded as the loop decodes them; seeded standard-normal ones
            when the run's data cannot be read here).

    Returns:
        The ``model.json`` content.

    Raises:
        StateError: No trained round (see :func:`run_model`).
        HSSALError: ONNX and torch disagree (beyond :data:`PARITY_ATOL`, :data:`PARITY_RTOL`, or
            on a class); nothing is written.
    """
    from safetensors.torch import save

    from hssal_ray.loop.run_config import science_sha

    rm = run_model(run_dir, round_idx)
    cfg = rm.cfg
    model = eval_model(rm)
    s = cfg.data.image_size
    source = "given"
    if sample is None:
        sample, source = run_images(rm, PARITY_IMAGES), "the run's images"
    if sample is None:
        sample = np.random.default_rng(0).standard_normal((4, cfg.data.bands, s, s)).astype(np.float32)
        source = "standard normal"
    _io.makedirs(out)
    diff, scale = _onnx(model, _io.join(out, "model.onnx"), torch.from_numpy(np.ascontiguousarray(sample)))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _io.atomic_write_bytes(_io.join(out, "model.safetensors"), save(state))
    frozen = isinstance(model, FrozenClassifier)  # the architecture written, as built for the run
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": rm.classes,
        "num_classes": len(rm.classes),
        "architecture": {
            "kind": "frozen_encoder" if frozen else "classifier",
            "backbone": cfg.ssl.model,
            "model_kwargs": cfg.ssl.model_kwargs,
            "head": cfg.ssl.head,
            "head_hidden": cfg.ssl.head_hidden,
            "feature_norm": cfg.frozen.feature_norm if frozen else None,
        },
        "input": preprocess_spec(cfg),
        "encoder_package": _package(cfg),
        "onnx": {
            "file": "model.onnx",
            "input": "image",
            "output": "logits",
            "opset": ONNX_OPSET,
            "parity_max_abs_diff": diff,
            "parity_max_abs_logit": scale,
            "parity_images": int(sample.shape[0]),
            "parity_inputs": source,
        },
        "source": {
            "run": str(run_dir),
            "round": rm.round,
            "weights": cfg.ssl.eval_model,
            "science_sha": science_sha(cfg),
            "test_accuracy": _test_accuracy(run_dir, rm.round),
        },
    }
    _io.atomic_write_json(_io.join(out, "model.json"), meta)
    _io.atomic_write_text(_io.join(out, "classify.py"), SNIPPET)
    return meta


def load_exported(folder: str) -> tuple[nn.Module, dict[str, Any]]:
    """The torch model and ``model.json`` of an export (this package, no run directory, no Ray)."""
    from safetensors.torch import load

    from hssal_ray.config import config_from_dict

    meta = _io.read_json(_io.join(folder, "model.json"))
    if meta.get("format") != FORMAT:
        raise HSSALError(f"{folder}/model.json is not an hssal_ray export (format {meta.get('format')!r})")
    arch, inp = meta["architecture"], meta["input"]
    frozen = arch["kind"] == "frozen_encoder"
    ssl = {
        "model": arch["backbone"],
        "model_kwargs": arch["model_kwargs"],
        "head": arch["head"],
        "head_hidden": arch["head_hidden"],
        "finetune": "frozen" if frozen else "full",
    }
    values: dict[str, Any] = {"data": {"bands": inp["bands"], "image_size": inp["size"]}, "ssl": ssl}
    if frozen:
        values["frozen"] = {"feature_norm": arch["feature_norm"]}
    cfg = config_from_dict(values)
    from hssal_ray.models import model_from_config

    state = load(_io.read_bytes(_io.join(folder, "model.safetensors")))
    if frozen:
        from hssal_ray.frozen.head import build_head

        backbone = model_from_config(cfg, num_classes=1, with_weights=False).backbone
        dim = state["head.1.mean"].shape[0] if "head.1.mean" in state else state["head.0.mean"].shape[0]
        model: nn.Module = FrozenClassifier(backbone, build_head(cfg, int(dim), meta["num_classes"]))
    else:
        model = model_from_config(cfg, meta["num_classes"], with_weights=False)
    model.load_state_dict(state)
    return model.eval(), meta


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
    p = argparse.ArgumentParser(prog="python -m hssal_ray.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory (local path or URI)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--round", type=int, default=None, help="round to export (default: the last trained one)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        meta = export(args.run, args.out, round_idx=args.round)
    except HSSALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    src = meta["source"]
    acc = src["test_accuracy"]
    print(
        f"exported round {src['round']} ({src['weights']} weights, {meta['num_classes']} classes"
        + (f", test accuracy {acc:.3f}" if isinstance(acc, (int, float)) else "")
        + f") to {args.out}: model.safetensors, model.onnx (max |logit diff| vs torch "
        f"{meta['onnx']['parity_max_abs_diff']:.2e}), model.json, classify.py"
    )
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: Ray pickles classes and functions of
    # __main__ by value (with their globals), those of an importable module by reference.
    from hssal_ray.export import main as _main

    sys.exit(_main())
