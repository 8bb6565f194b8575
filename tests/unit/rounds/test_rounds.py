"""The round's shared plumbing (:mod:`hssal_ray.rounds`) without Ray: seeds, the AMP rule and its
callers, checkpoints and warm starts, metric means, and the scores table's column set."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from hssal_ray.config import config_to_dict, load_config
from hssal_ray.rounds import (
    MetricMeans,
    amp_dtype,
    apply_warm_start,
    checkpoint_meta,
    derive_seed,
    empty_scores_table,
    global_step_of,
    scores_strong_view,
    scores_table,
    warm_start_of,
    write_checkpoint,
)

SMALL = ["ssl.model=hssal_small_cnn", "data.image_size=16"]


def test_rounds_imports_no_ray() -> None:
    code = (
        "import sys, hssal_ray.rounds; sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


def test_derive_seed_is_stable_and_separates_its_parts() -> None:
    a = derive_seed(0, 1, "train")
    assert a == derive_seed(0, 1, "train") and 0 <= a < 2**63
    assert len({a, derive_seed(0, 1, "query"), derive_seed(0, 2, "train"), derive_seed(1, 1, "train")}) == 4


@pytest.mark.parametrize(
    ("amp", "device", "want"),
    [
        ("none", "cpu", None),
        ("none", "cuda", None),
        ("auto", "cpu", None),
        ("auto", "cuda", torch.bfloat16),
        ("bf16", "cpu", torch.bfloat16),
        ("bf16", "cuda", torch.bfloat16),
    ],
)
def test_amp_rule(amp: str, device: str, want: torch.dtype | None) -> None:
    assert amp_dtype(amp, torch.device(device)) == want
    assert amp_dtype(amp, device) == want


class _Shard:
    """What the worker loop reads of a Ray Data shard: ``iter_torch_batches``."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.batches = [
            {
                "x_weak": torch.randn(4, 3, 16, 16, generator=g),
                "label": torch.randint(0, 3, (4,), generator=g),
            }
            for _ in range(n)
        ]

    def iter_torch_batches(self, **_: object):  # type: ignore[no-untyped-def]
        return iter(self.batches)


@pytest.mark.parametrize("amp", ["auto", "bf16", "none"])
def test_scoring_encoding_and_training_use_the_same_amp_rule(amp: str, tmp_path, monkeypatch) -> None:
    """On a CPU: the scoring actor, the frozen encoder and the Ray Train worker loop all autocast
    exactly as :func:`amp_dtype` says, ``bf16`` included."""
    from hssal_ray.frozen.encode import Encoder
    from hssal_ray.scoring import Scorer
    from hssal_ray.ssl import train_loop
    from hssal_ray.ssl.train_loop import LocalContext, build_train_state, run_worker

    cfg = load_config(None, [*SMALL, f"ssl.amp={amp}", "ssl.batch_size=4", "ssl.enabled=false"])
    want = amp_dtype(amp, "cpu")
    torch.manual_seed(0)
    ckpt = str(tmp_path / "checkpoint")
    write_checkpoint(build_train_state(cfg, 3, torch.device("cpu"), 1), ckpt, {"step": 0})
    assert Scorer(ckpt, config_to_dict(cfg), num_classes=3).amp == want
    assert Encoder(config_to_dict(cfg), ("none",)).amp == want
    seen: list[object] = []
    real = train_loop.train_step

    def spy(*args, **kw):  # type: ignore[no-untyped-def]
        seen.append(kw["amp_dtype"] if kw.get("allow_cpu_amp") else None)
        return real(*args, **kw)

    monkeypatch.setattr(train_loop, "train_step", spy)
    config = {
        "experiment": config_to_dict(cfg),
        "num_classes": 3,
        "total_steps": 2,
        "init_dir": None,
        "round": 0,
        "ssl_on": False,
        "seed": 0,
        "report_every": 1,
    }
    threads = torch.get_num_threads()
    try:
        run_worker(config, LocalContext({"labeled": _Shard(3)}, str(tmp_path / "work")))
    finally:
        torch.set_num_threads(threads)
    assert seen == [want, want]


def _state(seed: int) -> object:
    from hssal_ray.ssl.train_loop import build_train_state

    torch.manual_seed(seed)
    return build_train_state(load_config(None, SMALL), 3, torch.device("cpu"), 4)


def test_checkpoint_round_trip_and_warm_start(tmp_path) -> None:
    src = _state(0)
    src.step, src.step_offset = 3, 10  # type: ignore[attr-defined]
    ckpt = str(tmp_path / "ckpt")
    meta = checkpoint_meta(src, 2, {"loss": 1.5}, regime="frozen")
    assert meta == {"step": 3, "global_step": 13, "round": 2, "regime": "frozen", "metrics": {"loss": 1.5}}
    write_checkpoint(src, ckpt, meta)
    assert sorted(os.listdir(ckpt)) == ["ema.safetensors", "meta.json", "model.safetensors", "train_state.pt"]
    assert global_step_of(ckpt) == 13 and global_step_of(str(tmp_path / "none")) == 0
    init = warm_start_of(ckpt)
    dst = _state(1)
    apply_warm_start(dst, init)
    assert dst.step_offset == 13  # type: ignore[attr-defined]
    for a, b in zip(src.model.state_dict().values(), dst.model.state_dict().values(), strict=True):  # type: ignore[attr-defined]
        assert torch.equal(a, b)
    for a, b in zip(src.ema.module.state_dict().values(), dst.ema.module.state_dict().values(), strict=True):  # type: ignore[attr-defined]
        assert torch.equal(a, b)
    apply_warm_start(dst, {"model": init["model"], "ema": init["ema"]})  # a restart keeps the offset
    assert dst.step_offset == 13  # type: ignore[attr-defined]


def test_metric_means_skip_nan_per_key() -> None:
    m = MetricMeans()
    m.add({"loss": 1.0, "acc": float("nan")})
    m.add({"loss": 3.0, "acc": 0.5})
    m.add({"loss": torch.tensor(5.0)})
    assert m.means() == {"loss": 3.0, "acc": 0.5}


def test_strong_view_columns_follow_the_one_rule() -> None:
    assert not scores_strong_view(load_config(None, []))
    assert scores_strong_view(load_config(None, ["query.ssl_aware=true"]))
    assert scores_strong_view(load_config(None, ["query.uncertainty=disagreement"]))
    late = ["query.late_uncertainty=disagreement"]
    assert scores_strong_view(load_config(None, [*late, "query.pick=auto"]))
    assert not scores_strong_view(load_config(None, [*late, "query.pick=uncertain"]))  # never read then
    reads = load_config(
        None, ["query.uncertainty=margin", "query.pick=auto", *late, "query.alloc_flips=true"]
    )
    assert reads.query.scores_read() == ("margin", "disagreement")  # once each, uncertainty first
    flat = ["query.strategy=hal_flat", "query.pick=typical", "query.late_uncertainty=entropy"]
    assert load_config(None, [*flat, "query.alloc_flips=true"]).query.scores_read() == ("badge",)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=4).astype(np.float32)
    emb = rng.normal(size=(4, 5)).astype(np.float32)
    ids = np.array(list("abcd"), dtype=object)
    for strong in (False, True):
        t = scores_table(ids, emb, probs, probs if strong else None, 0.5)
        empty = empty_scores_table(5, 3, strong)
        assert t.column_names == empty.column_names and empty.num_rows == 0
        assert ("confident" in t.column_names) == ("u_disagreement" in t.column_names) == strong
    packed = empty_scores_table(5, 3, True, pack_embeddings=True)
    assert pa.types.is_fixed_size_binary(packed.schema.field("embedding").type)
