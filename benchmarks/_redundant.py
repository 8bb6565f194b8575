"""The pure part of :mod:`benchmarks.redundant_pool`: copy names, leak-free splits, copy views, wasted picks.

No Ray and no image: names and split hashes (the product's ``hssal_ray.data.catalog`` split),
view assignments, and counts read from finished run directories.
"""

from __future__ import annotations

import hashlib
import itertools
import posixpath
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import sweep_round_means
from hssal_ray.errors import DataError

__all__ = [
    "VAL_FRACTIONS",
    "original_of",
    "copy_index",
    "copy_name",
    "copy_views",
    "plan_copies",
    "placeable_share",
    "long_tail_subset",
    "class_subset",
    "check_groups",
    "wasted_picks",
    "waste_summary",
    "waste_markdown",
    "accuracy_markdown",
]

VAL_FRACTIONS = (0.0, 0.2)
_COPY = re.compile(r"__copy(\d+)(?:s\d+)?(?=\.[^./]*$|$)")
_VAL_SEED = 0x5A1  # hssal_ray.data.catalog.scan: the validation split's seed offset


def original_of(sample_id: str) -> str:
    """The id of the image a copy was made from (an image's own id for an image)."""
    return _COPY.sub("", sample_id, count=1)


def copy_index(sample_id: str) -> int:
    """``j`` of a copy ``<stem>__copy<j>...``; 0 for an image."""
    m = _COPY.search(sample_id)
    return int(m.group(1)) if m else 0


def copy_name(sample_id: str, j: int, salt: int = 0) -> str:
    """``<stem>__copy<j><ext>``, with ``s<salt>`` after ``j`` when ``salt`` > 0."""
    stem, ext = posixpath.splitext(sample_id)
    return f"{stem}__copy{j}{f's{salt}' if salt else ''}{ext}"


def copy_views(k: int, copies: int) -> list[dict[str, str]]:
    """For the image (index 0) and each copy ``j`` (index ``j``): its view name -> the image's view.

    Args:
        k: ``frozen.embed_views`` (views ``none``, ``weak_0..k-1``, ``strong_0..k-1``).
        copies: Copies per image (at most ``2k``: one per augmented view).
    """
    weak_type = ["none", *(f"weak_{i}" for i in range(k))]
    strong_type = [f"strong_{i}" for i in range(k)]
    aug = [*weak_type[1:], *strong_type]
    if not 0 <= copies <= len(aug):
        raise DataError(f"--copies must be in [0, {len(aug)}] with frozen.embed_views={k}, got {copies}")
    out = [{v: v for v in (*weak_type, *strong_type)}]
    used = {frozenset(weak_type)}  # the views averaged by scoring and evaluation (clean + weak)
    for clean in aug[:copies]:
        pref = [v for v in (*weak_type, *strong_type) if v != clean]
        weak = next((c for c in itertools.combinations(pref, k) if frozenset((clean, *c)) not in used), None)
        weak = weak or tuple(pref[:k])
        used.add(frozenset((clean, *weak)))
        strong = (
            [v for v in strong_type if v != clean and v not in weak]
            or [v for v in strong_type if v != clean]
            or [v for v in pref if v not in weak]
        )
        m = {"none": clean, **{f"weak_{i}": weak[i] for i in range(k)}}
        m.update({f"strong_{i}": strong[i % len(strong)] for i in range(k)})
        out.append(m)
    return out


# ------------------------------------------------------------------------------ leak-free copy names


def _h(seed: int, sid: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{sid}".encode(), digest_size=8).digest(), "big")


def _codes(ids: list[str], labels: np.ndarray, seed: int, tf: float, vf: float) -> np.ndarray:
    """Per id: 0 train, 1 test, 2 val, as ``scan`` splits them (the product's own ``_test_mask``)."""
    from hssal_ray.data.catalog import _test_mask

    test = _test_mask(ids, labels, tf, seed)
    code = test.astype(np.int8)
    if vf > 0:
        code[_test_mask(ids, np.where(test, -1, labels), vf, seed + _VAL_SEED)] = 2
    return code


def _cut(keys: list[int], inside: np.ndarray) -> int:
    """A hash value above the keys ``inside`` (the lowest ones) and below the others."""
    lo = max((k for k, i in zip(keys, inside, strict=True) if i), default=-1)
    hi = min((k for k, i in zip(keys, inside, strict=True) if not i), default=2**64)
    return (lo + hi) // 2


def long_tail_subset(
    ids: list[str], labels: np.ndarray, ratio: float, seed: int = 0
) -> tuple[list[str], dict[int, int]]:
    """The images a ``ratio``:1 long-tailed version of a dataset keeps (Cui et al. 2019's profile).

    The classes are put in a seeded random order; class ``i`` of ``C`` keeps ``ceil(n_i *
    ratio ** (-i / (C - 1)))`` of its ``n_i`` images (at least 1), those ranked first by a hash of
    their id, so the head class keeps all of them and the last about ``1 / ratio``. Deterministic.

    Returns:
        (the kept ids in the input's order, {class: images kept}).
    """
    if ratio < 1:
        raise DataError(f"--long-tail must be >= 1 (head : tail), got {ratio}")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    order = np.random.default_rng(seed).permutation(classes)
    keep: set[str] = set()
    kept: dict[int, int] = {}
    for i, c in enumerate(order):
        members = [s for s, lab in zip(ids, labels, strict=True) if lab == c]
        share = ratio ** (-i / max(len(order) - 1, 1))
        n = max(1, int(np.ceil(len(members) * share - 1e-9)))
        ranked = sorted(
            members, key=lambda s: hashlib.blake2b(f"lt{seed}:{s}".encode(), digest_size=8).digest()
        )
        keep.update(ranked[:n])
        kept[int(c)] = n
    return [s for s in ids if s in keep], kept


def class_subset(ids: list[str], labels: np.ndarray, n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """The images of a seeded random ``n`` of the classes, every image of each kept.

    A few-class version of a dataset: with the same budget fractions each class gets more labels
    a round, so ``pick: auto`` turns uncertain sooner (the regime of an archive with few classes).

    Returns:
        (the kept ids in the input's order, the kept classes, ascending).
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if not 2 <= n <= classes.size:
        raise DataError(f"--classes must be between 2 and the {classes.size} classes of the source, got {n}")
    kept = np.sort(np.random.default_rng(seed).permutation(classes)[:n])
    keep = np.isin(labels, kept)
    return [s for s, k in zip(ids, keep, strict=True) if k], [int(c) for c in kept]


def plan_copies(
    ids: list[str], labels: np.ndarray, copies: int, seeds: int, test_fraction: float, tries: int = 1 << 16
) -> dict[str, dict[int, str]]:
    """``{image id: {j: copy id}}``: copy names that never put a group across two splits of ``scan``.

    Every image keeps the split it has without copies, for each seed in ``range(seeds)``
    (validation fraction 0.2 and 0). Each copy name is salted until its split hashes fall on its
    image's side of the cuts between the images' splits. A split holds the lowest-ranked
    ``round(f * n)`` members of a class, so the copies per image are then chosen (an integer
    program, ``scipy.optimize.milp``, most copies first) so that, in every setting, the groups
    on each side hold exactly that many members.

    Args:
        ids: The images' sample ids; labels: their classes (every image labeled).
        copies: Copies wanted per image (some images get fewer when the counts demand it).
        seeds: Split seeds: ``range(seeds)``.
        test_fraction: ``data.test_fraction``.
        tries: Names tried per copy before it is given up.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    bad = [s for s in ids if original_of(s) != s]
    if bad:
        raise DataError(f"the source already holds names of copies (e.g. {bad[0]}): use another source")
    labels = np.asarray(labels)
    vf = max(VAL_FRACTIONS)
    codes = np.stack([_codes(ids, labels, s, test_fraction, vf) for s in range(seeds)])  # (seeds, n)
    _check_feasible(codes, test_fraction, vf, tries)
    plan: dict[str, dict[int, str]] = {}
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        members = [ids[i] for i in rows]
        cuts = []
        for s in range(seeds):
            code = codes[s, rows]
            tr = code != 1
            val_keys = [_h(s + _VAL_SEED, m) for m, t in zip(members, tr, strict=True) if t]
            cuts.append((_cut([_h(s, m) for m in members], code == 1), _cut(val_keys, code[tr] == 2)))
        found: list[list[str]] = []
        for i, m in zip(rows, members, strict=True):
            want = codes[:, i]
            got: list[str] = []
            for j in range(1, copies + 1):
                for t in range(tries):
                    name = copy_name(m, j, t)
                    if all(_side(name, s, cuts[s]) == want[s] for s in range(seeds)):
                        got.append(name)
                        break
                else:
                    break  # copies are kept in order j = 1, 2, ...
            found.append(got)
        # x_i copies of image i: on each side of each split, the members must number round(f * total)
        cons_a, lo, hi = [], [], []
        n, ones = len(rows), np.ones(len(rows))
        for s in range(seeds):
            test, val = codes[s, rows] == 1, codes[s, rows] == 2
            for f, inside, pool in ((test_fraction, test, ones), (vf, val, (~test).astype(float))):
                if f <= 0:
                    continue  # one side only: nothing to balance
                a = inside - f * pool  # members inside minus f * members split
                base = float(inside.sum() - f * pool.sum())
                cons_a.append(a)
                lo.append(-0.5 + 1e-6 - base)
                hi.append(0.5 - 1e-6 - base)
        ub = np.array([len(g) for g in found], dtype=float)
        res = milp(
            -ones,
            integrality=ones,
            bounds=Bounds(np.zeros(n), ub),
            constraints=LinearConstraint(np.array(cons_a), lo, hi) if cons_a else (),
        )
        x = np.round(res.x).astype(int) if res.success else np.zeros(n, int)
        for i, g, k in zip(rows, found, x, strict=True):
            plan[ids[i]] = {j + 1: name for j, name in enumerate(g[:k])}
    return {s: plan[s] for s in ids}


def placeable_share(codes: np.ndarray, test_fraction: float, val_fraction: float, tries: int) -> float:
    """The expected share of copies :func:`plan_copies` can name, before it searches.

    A salted name falls on a side of a split with about that side's share of the hash space, so a
    copy of an image whose sides over the seeds are ``codes[:, i]`` is found within ``tries`` names
    with ``1 - (1 - p_i) ** tries``, ``p_i`` the product of those shares: it shrinks geometrically
    with the seeds (about 0.4x a seed at the default fractions).
    """
    tf, vf = test_fraction, val_fraction
    share = np.array([(1 - tf) * (1 - vf), tf, (1 - tf) * vf])  # code 0 train, 1 test, 2 val
    p = np.prod(share[codes], axis=0)
    return float(np.mean(-np.expm1(tries * np.log1p(-np.minimum(p, 1.0 - 1e-12)))))


def _check_feasible(codes: np.ndarray, test_fraction: float, val_fraction: float, tries: int) -> None:
    """Refuse, before hours of salting, a seed count whose copies mostly cannot be placed."""
    seeds = codes.shape[0]
    got = placeable_share(codes, test_fraction, val_fraction, tries)
    if got >= 0.9:
        return
    ok = [s for s in range(1, seeds) if placeable_share(codes[:s], test_fraction, val_fraction, tries) >= 0.9]
    raise DataError(
        f"--seeds {seeds}: a copy's name must hash to its image's split in every seed, and with {seeds} "
        f"seeds only {got:.0%} of the copies would be found in {tries:,} names each (the search would "
        f"run for hours and make a pool with few copies); use --seeds {max(ok, default=1)} or fewer"
    )


def _side(name: str, seed: int, cuts: tuple[int, int]) -> int:
    if _h(seed, name) < cuts[0]:
        return 1
    return 2 if _h(seed + _VAL_SEED, name) < cuts[1] else 0


def check_groups(root: str, seeds: int, test_fraction: float) -> dict[str, Any]:
    """Scan ``root`` with the product's ``scan()`` for every seed and val_fraction 0 / 0.2.

    Returns:
        Pool size and per-class test fractions (of the root, and of its images).

    Raises:
        DataError: A group (image + copies) straddles two splits in some setting.
    """
    from hssal_ray.data.catalog import scan

    frac: dict[str, list[float]] = defaultdict(list)
    img_frac: dict[str, list[float]] = defaultdict(list)
    n = 0
    for seed, vf in itertools.product(range(seeds), VAL_FRACTIONS):
        cat = scan(root, test_fraction=test_fraction, seed=seed, val_fraction=vf)
        t = cat.table.to_pydict()
        n = len(t["sample_id"])
        split_of: dict[str, set[str]] = defaultdict(set)
        for sid, sp in zip(t["sample_id"], t["split"], strict=True):
            split_of[original_of(sid)].add(sp)
        leak = [g for g, sp in split_of.items() if len(sp) > 1]
        if leak:
            raise DataError(
                f"{root}: {len(leak)} group(s) straddle splits at seed {seed}, val_fraction {vf} "
                f"(e.g. {leak[0]}: {sorted(split_of[leak[0]])})"
            )
        if vf == 0:
            for c in cat.class_names:
                rows = [i for i, x in enumerate(t["class_name"]) if x == c]
                test = [i for i in rows if t["split"][i] == "test"]
                frac[c].append(len(test) / len(rows))
                imgs = [i for i in rows if original_of(t["sample_id"][i]) == t["sample_id"][i]]
                img_frac[c].append(sum(t["split"][i] == "test" for i in imgs) / len(imgs))
    return {
        "pool": n,
        "test_fraction_by_class": {c: float(np.mean(v)) for c, v in frac.items()},
        "image_test_fraction_by_class": {c: [round(x, 4) for x in v] for c, v in img_frac.items()},
    }


# ------------------------------------------------------------------------------ wasted picks


def _waste(r: int, picks: list[str], before: set[str]) -> dict[str, float]:
    groups = [original_of(s) for s in picks]
    return {
        "round": r,
        "batch": len(picks),
        "dup_in_batch": len(picks) - len(set(groups)),
        "group_labeled": sum(g in before for g in groups),
        "wasted": len(picks) - len(set(groups) - before),
    }


def wasted_picks(run: Path) -> list[dict[str, float]]:
    """Per batch of one finished run: its size, picks sharing a group with another pick of the
    batch (``dup_in_batch``), picks of a group labeled before it (``group_labeled``), and ``wasted``
    = picks that add no new group to the labels. Round -1 is the cold start (the labels of round 0),
    then one row per query round (``round_XXX/query.csv``)."""
    import pyarrow.parquet as pq

    from hssal_ray import _csv

    lab = pq.read_table(run / "labeled.parquet", columns=["sample_id", "round_added"]).to_pydict()
    added = list(zip(lab["sample_id"], lab["round_added"], strict=True))
    cold = [s for s, a in added if a == 0]
    out = [_waste(-1, cold, set())] if cold else []
    for rd in sorted(run.glob("round_[0-9][0-9][0-9]")):
        r = int(rd.name.split("_")[1])
        if not (rd / "query.csv").exists():
            continue
        picks = [row["sample_id"] for row in _csv.read_dicts((rd / "query.csv").read_text())]
        if picks:
            out.append(_waste(r, picks, {original_of(s) for s, a in added if a <= r}))
    return out


def waste_summary(sweep: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{strategy: {round: {column: mean over seeds}}}`` over the trials of a sweep directory."""
    return sweep_round_means([sweep], wasted_picks, "labeled.parquet")


def waste_markdown(summary: dict[str, dict[int, dict[str, float]]], dataset: str) -> str:
    cols = ("batch", "dup_in_batch", "group_labeled", "wasted")
    md = [
        f"# Wasted picks on {dataset} (picks that add no new image to the labels)",
        "",
        "Per method and query round, mean over seeds: `dup_in_batch` = picks in the same group (image +",
        "its near-copies) as another pick of the batch; `group_labeled` = picks of a group labeled before",
        "the round; `wasted` = picks that add no new group (batch minus new groups).",
        "",
        "| method | round | " + " | ".join(cols) + " | wasted % |",
        "|---|---|" + "---|" * (len(cols) + 1),
    ]
    for s, rounds in summary.items():
        for r, d in rounds.items():
            cells = [f"{d[c]:.1f}" for c in cols]
            md.append(
                f"| {s} | {'cold start' if r < 0 else r} | "
                + " | ".join(cells)
                + f" | {100 * d['wasted'] / d['batch']:.0f}% |"
            )
    return "\n".join(md) + "\n"


def accuracy_markdown(result: dict[str, Any]) -> str:
    """The label-efficiency result of the pool by label count (its fractions of a 5x pool are < 1%)."""
    s, diffs = result["summary"], result.get("paired_vs_hssal", {})
    methods = [m for m in s if m != "full_supervision"]
    if not methods:
        return ""
    labels = s[methods[0]]["num_labeled"]
    md = [
        f"Accuracy on the {result['evaluated_on']}, mean ± std over seeds {result['seeds']}, by labels:",
        "",
        "| method | " + " | ".join(f"{n} labels" for n in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for m in methods:
        a, d = s[m]["accuracy_mean"], s[m]["accuracy_std"]
        md.append(f"| {m} | " + " | ".join(f"{x:.3f} ± {y:.3f}" for x, y in zip(a, d, strict=True)) + " |")
    md += ["", "HSSAL minus each method, points (seeds where HSSAL is ahead; `~` inside one std):", ""]
    md += ["| vs | " + " | ".join(f"{n} labels" for n in labels) + " |", "|---|" + "---|" * len(labels)]
    for m, d in diffs.items():
        cells = [
            f"{100 * x:+.1f} ({w}/{len(d['seeds'])}){' ~' if c else ''}"
            for x, w, c in zip(d["diff_mean"], d["wins"], d["within_one_std"], strict=True)
        ]
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"
