"""Config sections of a round's selection and answers: ``query.*``, ``oracle.*``, ``loop.*``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from hssal_ray.config._base import _added, _check, _runtime

#: the smallest ``query.coarse_fit_sample``; HAL's constructor checks the same bound
MIN_COARSE_FIT_SAMPLE = 100
#: the sharpest ``query.alloc_temper`` (``mean_u**4 * size``: beyond, one cluster takes nearly every pick)
MAX_ALLOC_TEMPER = 4.0
#: HAL's weighings of a coarse cluster's uncertainty mass, each with its neutral value
MASS_WEIGHINGS = (("alloc_temper", 1.0), ("alloc_flips", False), ("alloc_purity", False))


@dataclass(frozen=True)
class QueryConfig:
    """Active-learning query (HAL by default).

    Args:
        strategy: Query strategy name.
        budget: Samples queried per round: an integer count, or a float in (0, 1] = that fraction
            of the training split (scikit-learn's ``test_size`` convention), rounded to the nearest
            count (at least 1) once the data set is known: ``0.02`` asks 2% of the training images
            per round on any data set.
        uncertainty: Uncertainty score HAL ranks by. ``committee`` (frozen path with graph
            pseudo-labels only): the margin of the mean of the student's, the supervised teacher's and
            the graph-smoothed pseudo-labels' class probabilities (query by committee,
            :func:`hssal_ray.query.uncertainty.committee`).
        coarse_k: Coarse clusters K1 (0 = automatic from pool size and budget).
        candidate_ratio: r: candidates kept per coarse cluster = ceil(r * b_k).
        late_candidate_ratio: With ``pick: auto``/``auto_local``: r once the picks are ``late_pick``
            (0 = ``candidate_ratio`` in every round). TypiClust's low/high-budget finding says
            diversity matters less as labels grow, so a smaller late r keeps the picks nearer the
            most uncertain rows (``configs/ucm_cpu.yaml``: 3, the fourteenth study). About r
            candidates share a fine cluster, so on an archive whose scenes repeat more than r times
            keep 0 or set ``copy_check: late``: a scene's copies otherwise span two fine clusters and
            can both be picked.
        fine_method: Fine clustering of the candidates.
        fine_space: What the fine level clusters (HAL and its flat variant): the candidates'
            embeddings (``embedding``), or BADGE's gradient embeddings ``(p - onehot(argmax p)) ⊗ h``
            (the paper's gradient-based fine level): ``gradient`` in every round, ``late`` only in
            rounds whose pick is not typical (``pick: auto`` past ``typical_until``). Needs the
            scores' ``probs``; a fine problem then holds ``m * C * d`` floats (refused above 2 GiB:
            the flat variant's one problem on a large pool).
        pick: Which sample of each fine cluster is queried: the most ``uncertain``, the most
            ``typical`` (TypiClust density), ``balanced`` (best sum of its uncertainty rank and its
            typicality rank among the candidates), ``eer`` (the largest expected error reduction on
            the pool's k-NN graph, ``hssal_ray/query/eer.py``), ``cover`` (no fine clustering: ProbCover's
            greedy max coverage, the candidates whose balls hold the most pool rows no labeled row or
            earlier pick is near, ties to the more uncertain; the ball holds a typical row's 20 nearest
            rows), or ``auto``: ``early_pick`` while the labeled set holds fewer than ``typical_until``
            labels per class on average, ``late_pick`` from then on; ``auto_local`` (HAL): that rule
            inside each coarse cluster, by its share of the labels.
        typical_until: Labels per class (average) at which ``pick: auto`` turns from typical to
            uncertain.
        coarse_fit_sample: Fit the coarse k-means on at most this many rows.
        kmeans_backend: ``auto`` = cuML when importable and a GPU is visible, else CPU.
        kmeans_iters: Lloyd iterations.
        ssl_aware: Leave out samples both SSL views already pseudo-label confidently.
        alloc_temper: HAL's budget per coarse cluster follows ``mass**t * size**(1-t)``, ``t`` in
            ``[0, 4]``: 1 = uncertainty mass, 0 = cluster size; above 1 it sharpens toward the
            clusters whose rows are most uncertain on average (2: ``mean_u**2 * size``).
        cover_labeled: HAL's fine clustering includes the labeled rows (of each coarse cluster) and
            picks only from fine clusters that hold none (TypiClust's coverage rule).
        cover_scale: With ``cover_labeled``, HAL: ``cluster`` = each coarse cluster clusters its
            candidates and labeled rows into ``b_k + L_k`` (``b_k`` by uncertainty mass) and takes
            ``b_k`` uncovered ones; ``flat`` = the flat variant's ``B + L`` fine clusters spread over
            the coarse clusters by candidate count, the budget going to the largest uncovered fine
            clusters of all of them together (needs ``alloc_over: global``).
        coarse_fit: HAL's coarse k-means is fitted on a sample of the pool (``pool``) or, with
            ``alloc_over: global``, on the round's candidates, the rows it splits (``candidates``).
        alloc_over: HAL sums each coarse cluster's uncertainty mass over all its rows (``pool``) or
            only over its rows among the pool's ``ceil(candidate_ratio * budget)`` most uncertain
            (``candidates``); ``global``: those rows are also the candidates, each coarse cluster
            clustering its share of them (the flat variant's selection in K1 pieces); ``auto``:
            ``pool`` while the round's pick rule is typical, ``candidates`` once it is uncertain.
        late_uncertainty: With ``pick: auto``/``auto_local``: the score HAL ranks by once picks are
            uncertain (``same`` = ``uncertainty``; ``disagreement`` has the score stage score a strong
            view too, :func:`hssal_ray.rounds.policy.scores_strong_view`). ``entropy`` gains on
            SIRI-WHU's validation split and ties on UCM's (``benchmarks/results/hal_recipe_val.md``,
            studies 16-19); on an archive whose scenes repeat pair it with ``late_candidate_ratio: 0``:
            at r = 3 its most uncertain rows are more often copies of one scene (22% of UCM x5's batch).
        late_pick: With ``pick: auto``/``auto_local``: the pick once the labeled set is past
            ``typical_until`` (``uncertain`` or ``eer``).
        early_pick: With ``pick: auto``/``auto_local``: the pick before that (``typical`` or
            ``cover``).
        cover_by: What a ``cover`` pick's ball gains: the pool ``rows`` it newly covers, or their
            summed ``uncertainty`` (the most uncertain mass not yet near a label).
        boundary_check: HAL replaces a pick closer than the fine clusters' measured radius to a
            pick of another coarse cluster (near-copies split by a coarse boundary) with the next
            candidate of its own coarse cluster that is not; ``late``: only in rounds whose pick rule
            is not typical (``pick: auto`` past ``typical_until``).
        copy_check: HAL and its flat variant run that check over every pair of picks, of one coarse
            cluster too: with few candidates per pick (``late_candidate_ratio``) a scene present more
            than r times spans two fine clusters and both can be picked; the rows ``candidate_ratio``
            would add then set the radius and replace a dropped copy. ``late``: only in rounds whose
            pick rule is not typical. For archives whose scenes repeat; not in the profile (on clean
            pools it also spreads near-neighbour picks: the fifteenth study).
        typical_scale: HAL's typical picks rank by density among the 20 nearest candidates of
            their coarse cluster (``cluster``) or at the flat variant's scale (``flat``: 20 among
            all the round's candidates, ``20 * m_k / M`` of a coarse cluster's ``m_k``), or as the flat
            variant does (``global``: the 20 nearest of all the round's candidates).
        typical_over: A typical pick's density is measured among the round's candidates
            (``candidates``) or, as TypiClust does, among the pool (``pool``: the 20 nearest rows of
            the candidate's coarse cluster, labeled ones included; the whole pool for ``hal_flat``).
        alloc_flips: HAL weighs each coarse cluster's uncertainty mass by the rate at which its
            rows' weak and strong views predict different classes, relative to the pool's (where
            consistency training has not settled); ``mass``: by their summed disagreement instead of
            the flip count; the score stage then scores a strong view too.
        alloc_purity: HAL weighs each coarse cluster's uncertainty mass by how mixed the oracle's
            labels in it are (the share of its labeled rows outside its majority class, relative to
            the pool's; Dasgupta & Hsu's hierarchical sampling): clusters the labels show to be one
            class get less of the budget, mixed ones more. Needs the labeled rows' classes (the loop
            has them; ``python -m hssal_ray.query`` reads them from ``--exclude``'s ``label`` column).
        coarse_by: HAL's coarse level: ``kmeans`` of the embeddings (``coarse_k`` clusters), or the
            model's classes without a k-means: ``predicted`` (one group per predicted class) or
            ``confusion`` (one per unordered pair of the two most probable classes, i.e. per
            decision boundary); needs the scores file's ``pred``/``probs`` columns.
        coarse_min_classes: With ``coarse_k: 0`` HAL's automatic K1 (``ceil(B / 3)``, at most 64) is
            at least the number of classes, so the coarse k-means never has fewer clusters than the
            label space has classes (measured, not in the profile; needs the ``probs`` column).
        alloc_round_robin: HAL's coarse clusters take picks in turn, the one with the fewest
            candidates first, until the budget is spent (Cluster-Margin's round robin, Citovsky et
            al. 2021), instead of in proportion to their uncertainty mass: an equal share for every
            region the candidates come from. Not with ``alloc_temper != 1``, ``alloc_flips`` or
            ``alloc_purity`` (they weigh the mass this rule does not read).
        pool_sample: Unlabeled rows the score stage scores for the round's query: 0 = every one; a
            count, or a fraction of the training split (as ``budget``), drawn uniformly at random
            without replacement, seeded by ``seed`` and the round (a rerun or resumed round draws the
            same rows). The labeled rows are always scored. For an archive whose full scoring pass each
            round (decode + forward of every image on the fine-tuning path) costs more than the query
            needs (baal's ``max_sample``): the query then picks among the sampled rows. At least the
            round's batch; a sample below ``candidate_ratio`` x the batch leaves HAL's ranking nothing
            to choose from (a warning says so). Training still reads the whole pool. On the
            fine-tuning path the TypiClust cold start scores a sample of the split of this size too
            (at least ``loop.initial_labeled``); the frozen path's reads its stored features.
        parallel: Run HAL's per-coarse-cluster steps as parallel Ray tasks.
    """

    strategy: Literal["hal", "hal_flat", "random", "entropy", "margin", "typiclust", "coreset", "badge"] = (
        "hal"
    )
    budget: int | float = 20
    uncertainty: Literal["badge", "entropy", "margin", "least_confidence", "disagreement", "committee"] = (
        "badge"
    )
    coarse_k: int = 0
    candidate_ratio: float = 3.0
    late_candidate_ratio: float = _added(0.0)
    fine_method: Literal["kmeans", "spectral"] = "kmeans"
    fine_space: Literal["embedding", "gradient", "late"] = _added("embedding")
    pick: Literal["uncertain", "typical", "balanced", "eer", "cover", "auto", "auto_local"] = "uncertain"
    typical_until: float = _added(3.0)
    coarse_fit_sample: int = 100_000
    kmeans_backend: Literal["auto", "torch", "faiss", "sklearn", "cuml"] = "auto"
    kmeans_iters: int = 20
    ssl_aware: bool = False
    alloc_temper: float = 1.0
    cover_labeled: bool = _added(False)
    cover_scale: Literal["cluster", "flat"] = _added("cluster")
    coarse_fit: Literal["pool", "candidates"] = _added("pool")
    alloc_over: Literal["pool", "candidates", "global", "auto"] = _added("pool")
    late_uncertainty: Literal[
        "same", "badge", "entropy", "margin", "least_confidence", "disagreement", "committee"
    ] = _added("same")
    late_pick: Literal["uncertain", "eer"] = _added("uncertain")
    early_pick: Literal["typical", "cover"] = _added("typical")
    cover_by: Literal["rows", "uncertainty"] = _added("rows")
    boundary_check: bool | Literal["late"] = _added(False)
    copy_check: bool | Literal["late"] = _added(False)
    typical_scale: Literal["cluster", "flat", "global"] = _added("cluster")
    typical_over: Literal["candidates", "pool"] = _added("candidates")
    alloc_flips: bool | Literal["mass"] = _added(False)
    alloc_purity: bool = _added(False)
    coarse_by: Literal["kmeans", "predicted", "confusion"] = _added("kmeans")
    coarse_min_classes: bool = _added(False)
    alloc_round_robin: bool = _added(False)
    pool_sample: int | float = _added(0)
    parallel: bool = _runtime(False)

    def __post_init__(self) -> None:
        _check_count("query.budget", self.budget, minimum=1)
        _check_count("query.pool_sample", self.pool_sample, minimum=0)
        _check(self.coarse_k >= 0, "query.coarse_k", f"must be >= 0 (0 = auto), got {self.coarse_k}")
        _check(
            self.candidate_ratio >= 1.0, "query.candidate_ratio", f"must be >= 1, got {self.candidate_ratio}"
        )
        _check(
            self.coarse_fit_sample >= MIN_COARSE_FIT_SAMPLE,
            "query.coarse_fit_sample",
            f"must be >= {MIN_COARSE_FIT_SAMPLE}",
        )
        _check(
            self.late_candidate_ratio == 0 or self.late_candidate_ratio >= 1.0,
            "query.late_candidate_ratio",
            f"must be 0 (= candidate_ratio) or >= 1, got {self.late_candidate_ratio}",
        )
        _check(self.kmeans_iters >= 1, "query.kmeans_iters", "must be >= 1")
        _check(
            0.0 <= self.alloc_temper <= MAX_ALLOC_TEMPER,
            "query.alloc_temper",
            f"must be in [0, {MAX_ALLOC_TEMPER:g}]",
        )
        _check(self.typical_until >= 0, "query.typical_until", f"must be >= 0, got {self.typical_until}")
        _check(
            not self.alloc_round_robin or all(getattr(self, k) == off for k, off in MASS_WEIGHINGS),
            "query.alloc_round_robin",
            "allocates without the uncertainty mass: not with alloc_temper != 1, alloc_flips or alloc_purity",
        )
        if self.strategy == "hal":
            clash = coarse_fit_clashes(self)
            _check(not clash, "query.coarse_fit", f"candidates cannot run with {', '.join(clash)}")
            clash = cover_scale_clashes(self)
            _check(
                not clash,
                "query.cover_scale",
                "flat takes the budget by coverage, not by uncertainty mass, and cannot run with "
                + ", ".join(clash),
            )

    def scores_read(self) -> tuple[str, ...]:
        """The uncertainty scores the query reads, ``uncertainty`` first (each a ``u_<name>`` column).

        ``late_uncertainty`` counts only with ``pick: auto``/``auto_local`` (the picks that switch),
        and HAL's ``alloc_flips`` reads ``disagreement``. The score stage decides from this which
        optional columns to write (:mod:`hssal_ray.rounds.policy`); the query CLI which to load.
        """
        reads = [self.uncertainty]
        if self.late_uncertainty != "same" and self.pick in ("auto", "auto_local"):
            reads.append(self.late_uncertainty)
        if self.alloc_flips and self.strategy == "hal":
            reads.append("disagreement")
        return tuple(dict.fromkeys(reads))

    def reads_classes(self) -> bool:
        """Whether the query reads the labeled rows' classes (HAL's ``alloc_purity``), not only their ids."""
        return self.strategy == "hal" and self.alloc_purity


@dataclass(frozen=True)
class OracleConfig:
    """Who answers the queries.

    Args:
        kind: ``simulated`` answers from the dataset's labels; ``human`` exports the batch as files
            and stops until ``--resume RUN --labels FILE``; ``label_studio`` pushes the batch to a
            Label Studio server (with the model's predictions) and pulls the annotations back on
            ``--resume RUN`` or while polling (``wait_s``).
        partial: With people answering, ``wait`` rejects answers that miss queried ids (skipped,
            cancelled or missing tasks); ``continue`` goes on with what came back.
        hide_sample_id: Show annotators an opaque ``ref`` instead of the sample id; ``auto`` hides
            it when it would reveal a folder name (ImageFolder data: the class).
        image_format: Encoding of the images embedded in the Label Studio tasks (``jpeg`` is ~3x
            smaller than ``png`` for photos).
        image_size: Longest side of the embedded images, in pixels.
        url: Base URL of the Label Studio server (``kind=label_studio``).
        project_id: An existing Label Studio project to use; ``None`` creates one per run on first
            use (recorded in ``RUN/label_studio.json``).
        token_env: Name of the environment variable that holds the Label Studio API token. The
            token itself is never part of the config.
        wait_s: Seconds the loop keeps polling Label Studio for a round's annotations before it
            exits ``awaiting_labels`` (0: look once).
        poll_s: Seconds between two polls.
    """

    kind: Literal["simulated", "human", "label_studio"] = "simulated"
    partial: Literal["wait", "continue"] = _runtime("wait")
    hide_sample_id: bool | Literal["auto"] = _runtime("auto")
    image_format: Literal["jpeg", "png"] = _runtime("jpeg")
    image_size: int = _runtime(256)
    url: str = _runtime("http://localhost:8080")
    project_id: int | None = _runtime(None)
    token_env: str = _runtime("LABEL_STUDIO_API_KEY")
    wait_s: float = _runtime(0.0)
    poll_s: float = _runtime(10.0)

    def __post_init__(self) -> None:
        _check(
            16 <= self.image_size <= 4096,
            "oracle.image_size",
            f"must be in [16, 4096], got {self.image_size}",
        )
        _check(
            self.url.startswith(("http://", "https://")) and len(self.url.split("://", 1)[1].strip("/")) > 0,
            "oracle.url",
            f"must be an http:// or https:// URL of the Label Studio server, got {self.url!r}",
        )
        _check(
            "@" not in self.url.split("://", 1)[-1].split("/", 1)[0],
            "oracle.url",
            f"must not hold credentials; put the API token in the environment variable {self.token_env}",
        )
        _check(
            self.project_id is None or self.project_id >= 1,
            "oracle.project_id",
            f"must be a Label Studio project id >= 1 (or null to create one), got {self.project_id}",
        )
        _check(
            bool(_ENV_NAME.match(self.token_env)),
            "oracle.token_env",
            f"must be the NAME of an environment variable (letters, digits, '_'), got {self.token_env!r}; "
            "the token itself never goes into the config",
        )
        _check(self.wait_s >= 0, "oracle.wait_s", f"must be >= 0 seconds (0 = look once), got {self.wait_s}")
        _check(self.poll_s >= 0.1, "oracle.poll_s", f"must be >= 0.1 seconds, got {self.poll_s}")


def coarse_fit_clashes(q: Any) -> list[str]:
    """What ``coarse_fit: candidates`` cannot run with (empty: nothing, or the option is off).

    ``q`` is a :class:`QueryConfig` or HAL itself (the same attribute names): both ask this.
    """
    if q.coarse_fit != "candidates":
        return []
    return [
        *([] if q.alloc_over == "global" else [f"alloc_over={q.alloc_over!r} (needs 'global')"]),
        *([] if q.coarse_by == "kmeans" else [f"coarse_by={q.coarse_by!r} (needs 'kmeans')"]),
    ]


def cover_scale_clashes(q: Any) -> list[str]:
    """What ``cover_scale: flat`` cannot run with (empty: nothing, or the option is off).

    It takes the picks from the fine clusters the labels leave uncovered, over all coarse clusters at
    once, so it needs ``cover_labeled`` and ``alloc_over: global`` and has no use for the mass
    weighings, round robin or a ``cover`` pick. ``q`` as for :func:`coarse_fit_clashes`.
    """
    if q.cover_scale != "flat":
        return []
    cover_pick = q.pick == "cover" or (q.pick in ("auto", "auto_local") and q.early_pick == "cover")
    return [
        *([] if q.cover_labeled else ["cover_labeled=False (cover_scale sets its scale)"]),
        *([] if q.alloc_over == "global" else [f"alloc_over={q.alloc_over!r} (not 'global')"]),
        *(["a 'cover' pick (no fine clusters to cover)"] if cover_pick else []),
        *(["alloc_round_robin=True"] if q.alloc_round_robin else []),
        *(f"{k}={getattr(q, k)!r}" for k, off in MASS_WEIGHINGS if getattr(q, k) != off),
    ]


def _check_count(key: str, value: int | float, minimum: int) -> None:
    """A label count (int >= ``minimum``) or a fraction of the training split (float in (0, 1])."""
    if isinstance(value, float):
        _check(
            0.0 < value <= 1.0 or (minimum == 0 and value == 0.0),
            key,
            f"a float is a fraction of the training split and must be in (0, 1], got {value}; "
            "write a whole number (e.g. 34) for a count",
        )
    else:
        word = "(0 = no limit)" if minimum == 0 else ""
        _check(value >= minimum, key, f"must be >= {minimum} {word}, got {value}".replace("  ", " "))


def label_count(value: int | float, n_train: int) -> int:
    """A count-or-fraction setting (``query.budget``, ``loop.initial_labeled``, ``loop.total_budget``)
    as a number of samples of a training split of ``n_train`` rows: ints as they are, fractions
    ``round(value * n_train)`` (half up), at least 1 unless the value is 0."""
    if not isinstance(value, float):
        return int(value)
    if value == 0.0:
        return 0
    return max(1, int(value * n_train + 0.5))


def budget_unit(loop: LoopConfig) -> str:
    """``"fraction"`` when the budgets are fractions of the training split, else ``"count"``
    (the config requires the three budget keys to agree)."""
    return "fraction" if isinstance(loop.initial_labeled, float) else "count"


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _plain_name(name: str) -> bool:
    """Whether ``name`` is a single path component that stays inside its parent folder."""
    return (
        name not in ("", ".", "..")
        and name == name.strip()
        and not any(c in name for c in "/\\")
        and all(c.isprintable() for c in name)
    )


@dataclass(frozen=True)
class LoopConfig:
    """The closed loop.

    Args:
        name: Run name; the run directory is ``run_dir/name``. One plain folder name: not empty,
            ``.`` or ``..``, without ``/``, ``\\`` or control characters.
        run_dir: Parent directory (local path or URI) of run directories.
        rounds: Query rounds after the cold start.
        total_budget: Stop once this many labels are reached (0 = no limit besides ``rounds``); at
            least ``initial_labeled``. A count, or a fraction of the training split (as ``query.budget``).
        initial_labeled: Size of the round-0 cold-start set: a count, or a fraction of the training
            split (as ``query.budget``).
        cold_start: ``random`` (seeded), ``typiclust`` (clusters of the untrained encoder's
            features) or ``stratified`` (simulation only: uses the true labels).
        report: Write the HTML/PNG report at the end of every round.
        stop_kappa: Stop once the model's predictions have settled (0 = never; e.g. ``0.99``): after
            each round's scoring, Cohen's kappa between its and the previous round's predicted classes
            on the unlabeled rows both scored (``metrics.jsonl``: ``stability_kappa``); the run ends
            when the mean of the last ``stop_window`` kappas reaches this, before the next query
            (Bloodgood & Vijay-Shanker 2009: 0.99 over 3 rounds; :mod:`hssal_ray.rounds.stability`).
            A runtime setting, like ``rounds`` and ``total_budget``.
        stop_window: How many rounds' kappas ``stop_kappa`` averages (>= 1).
        lease_timeout_s: Run-directory lease (one driver per run): a driver whose lease
            heartbeat is older than this may be taken over by another. A runtime setting, not
            part of the run's science (``hssal_ray/loop/lease.py``).
    """

    name: str = _runtime("demo")
    run_dir: str = _runtime("runs")
    rounds: int = _runtime(3)
    total_budget: int | float = _runtime(0)
    initial_labeled: int | float = 20
    cold_start: Literal["random", "typiclust", "stratified"] = "random"
    report: bool = _runtime(True)
    stop_kappa: float = _runtime(0.0)
    stop_window: int = _runtime(3)
    lease_timeout_s: float = _runtime(60.0)

    def __post_init__(self) -> None:
        _check(
            _plain_name(self.name),
            "loop.name",
            f"must be one plain folder name (not empty, '.' or '..'; no '/', '\\' or control characters; "
            f"no leading or trailing spaces), got {self.name!r}",
        )
        _check(self.rounds >= 0, "loop.rounds", f"must be >= 0, got {self.rounds}")
        _check_count("loop.total_budget", self.total_budget, minimum=0)
        _check_count("loop.initial_labeled", self.initial_labeled, minimum=1)
        same_unit = isinstance(self.total_budget, float) == isinstance(self.initial_labeled, float)
        _check(
            self.total_budget == 0 or not same_unit or self.total_budget >= self.initial_labeled,
            "loop.total_budget",
            f"must be >= loop.initial_labeled ({self.initial_labeled}) or 0 (no limit), "
            f"got {self.total_budget}: the cold start alone would exceed it",
        )
        _check(
            0.0 <= self.stop_kappa <= 1.0,
            "loop.stop_kappa",
            f"must be in [0, 1] (0 = never stop early; e.g. 0.99), got {self.stop_kappa}",
        )
        _check(self.stop_window >= 1, "loop.stop_window", f"must be >= 1, got {self.stop_window}")
        _check(self.lease_timeout_s > 0, "loop.lease_timeout_s", f"must be > 0, got {self.lease_timeout_s}")
