"""Two-rank gloo tests: threshold/alignment state stays identical across DDP ranks, EMA under DDP."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hssal_ray.ssl.ema import build_ema
from hssal_ray.ssl.fixmatch import DistributionAlignment, FlexMatchThresholds, FreeMatchThresholds

WORLD = 2
# Each rank's weak-view probabilities (same batch size, as DDP training uses).
BATCHES = [
    torch.tensor([[0.99, 0.01, 0.0], [0.2, 0.7, 0.1]]),
    torch.tensor([[0.0, 0.03, 0.97], [0.96, 0.02, 0.02]]),
]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    # Not torch.testing.assert_close: with a process group up it imports torch.distributed.tensor (~4 s).
    assert torch.allclose(a, b, atol=1e-6), (a, b)


def _worker(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        everything = torch.cat(BATCHES)

        free, ref = FreeMatchThresholds(3, momentum=0.5), FreeMatchThresholds(3, momentum=0.5)
        free.update(BATCHES[rank])
        ref_state = _single_process(lambda: ref.update(everything), ref)
        _close(free.thresholds(), ref_state.thresholds())

        # Unequal batch sizes, per-sample memory: both ranks see every rank's confident predictions.
        flex = FlexMatchThresholds(3, p_cutoff=0.95, num_unlabeled=6)
        idx = torch.tensor([0, 1]) if rank == 0 else torch.tensor([4])
        flex.update(BATCHES[rank][: len(idx)], idx=idx)
        assert flex.selected_label.tolist() == [0, -1, -1, -1, 2, -1], flex.selected_label

        index_free, ref_free = FlexMatchThresholds(3, momentum=0.5), FlexMatchThresholds(3, momentum=0.5)
        index_free.update(BATCHES[rank])
        _single_process(lambda: ref_free.update(everything), ref_free)
        _close(index_free.thresholds(), ref_free.thresholds())

        quant = FreeMatchThresholds(3, momentum=0.0, use_quantile=True)
        quant.update(BATCHES[rank])
        _close(quant.time_p, torch.quantile(everything.max(dim=1).values, 0.8))

        da = DistributionAlignment(3)
        da.update(BATCHES[rank])
        _close(da.p_model, everything.mean(dim=0))

        drift = FreeMatchThresholds(3)
        drift.time_p = torch.tensor(float(rank))  # ranks disagree: all_reduce_ averages them
        drift.all_reduce_()
        _close(drift.time_p, torch.tensor(0.5))

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        ddp = nn.parallel.DistributedDataParallel(model)
        ema = build_ema(ddp, 0.5, warmup=False)
        p0 = [p.detach().clone() for p in model.parameters()]
        ddp(torch.randn(4, 3)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(p.grad)  # identical on both ranks after DDP's gradient all-reduce
        ema.update(ddp.module, step=2)  # step 1 would copy (decay 0)
        for e, a, b in zip(ema.module.parameters(), p0, model.parameters(), strict=True):
            _close(e, 0.5 * a + 0.5 * b)
        _close(ema.module[1].running_var, 0.5 * torch.ones(4) + 0.5 * model[1].running_var)
    finally:
        dist.destroy_process_group()


def _single_process(fn, obj):  # type: ignore[no-untyped-def]
    """Run ``fn`` as if not distributed (the reference computation on the concatenated batch)."""
    import hssal_ray.ssl.fixmatch as fm

    saved = fm._world_size
    fm._world_size = lambda: 1  # type: ignore[assignment]
    try:
        fn()
    finally:
        fm._world_size = saved  # type: ignore[assignment]
    return obj


def test_state_is_synchronised_across_two_gloo_ranks(tmp_path) -> None:
    import torch._dynamo  # noqa: F401  (DDP imports it; import once here, not in both forked children)

    init_file = str(tmp_path / "dist_init")
    os.environ.pop("MASTER_ADDR", None)
    mp.start_processes(_worker, args=(init_file,), nprocs=WORLD, join=True, start_method="fork")
