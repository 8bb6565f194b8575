"""``num_labeled`` counts the labeled images a round could train on, not labels of unreadable images."""

from __future__ import annotations

from hssal_ray import _io
from hssal_ray.loop.metrics import read_metrics
from hssal_ray.loop.stages import evaluate as evaluate_stage
from hssal_ray.state import LabeledSet, RunState, round_dir
from hssal_ray.tune.trial import row_is_final

from .test_stages import _ctx


def test_num_labeled_leaves_out_labeled_images_that_became_unreadable(tmp_path, monkeypatch) -> None:
    ctx = _ctx(tmp_path, "loop.rounds=5", "loop.total_budget=3")
    train = ctx.split("train").column("sample_id").to_pylist()
    LabeledSet().with_round(0, {s: 0 for s in train[:3]}, "oracle").save(ctx.run_dir)
    # the round's decode found one labeled image broken: listed like every bad sample
    _io.atomic_write_text(
        _io.join(ctx.run_dir, "bad_samples.csv"), f"sample_id,reason\n{train[1]},truncated\n"
    )
    _io.atomic_write_json(_io.join(round_dir(ctx.run_dir, 0), "train_metrics.json"), {"loss": 1.0})
    monkeypatch.setattr(ctx.learner, "evaluate", lambda r: {"test_accuracy": 0.5})

    labeled = LabeledSet.load(ctx.run_dir)
    assert ctx.labeled_rows(labeled).column("sample_id").to_pylist() == [train[0], train[2]]  # trained on
    state = RunState(round=0, stage="evaluate")
    evaluate_stage.run(ctx, state, 0.0)

    (row,) = read_metrics(ctx.run_dir)
    assert row["num_labeled"] == 2 and row["num_labeled_unreadable"] == 1
    assert row["label_fraction"] == 2 / len(train)
    assert row["round"] == 0 and row["test_accuracy"] == 0.5  # the metrics contract keys stay
    # the budget counts the 3 labels asked for: this round is the last, for the loop and for Tune
    assert row["final"] is True and state.status == "done"
    del row["final"]
    assert row_is_final(ctx.cfg, row) is True
