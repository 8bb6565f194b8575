"""The run report: files, values, degenerate runs, CLI."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from hssal_ray.errors import StateError
from hssal_ray.report import build_report
from hssal_ray.report.__main__ import main
from hssal_ray.report._data import RunData, load_run
from hssal_ray.report._plots import query_classes_figure
from hssal_ray.report.build import _queries_table

from ._fake_run import make_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _valid_png(path: str | Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()


def test_report_of_a_three_round_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = make_run(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        written = build_report([str(run)], str(out))
    assert set(written) == {"learning_curve", "query_classes/hal_run", "rounds_csv", "html", "markdown"}
    for path in written.values():
        assert Path(path).parent == out and Path(path).stat().st_size > 0
    _valid_png(written["learning_curve"])
    _valid_png(written["query_classes/hal_run"])
    assert "metrics.jsonl line 2: not valid JSON, skipped" in caplog.text
    assert "metrics.jsonl line 3: no numeric 'num_labeled', skipped" in caplog.text

    page = Path(written["html"]).read_text()
    for value in [
        "hal_run (hal)",
        "running, round 3, stage train",
        "75.00%",
        "62.50%",
        "50.00%",
        "3.00%",
        "45.00%",
    ]:
        assert value in page, value
    assert (
        "<td>16</td>" in page
        and "<td>1.2346</td>" in page
        and "<td>12.00</td>" in page
        and "<td>0.25</td>" in page
    )  # labels, loss, train s
    assert "<td>15.75</td>" in page  # total wall time of round 1
    assert "<td>3/5</td>" in page and "<td>3</td>" in page  # coverage from metrics; from query.csv
    assert "forest 2, river 1, beach 1" in page  # round 0 from labels.csv
    assert "forest 3, river 1" in page  # round 1 from labeled.parquet (no labels.csv)
    assert 'src="learning_curve.png"' in page and 'src="query_classes_hal_run.png"' in page
    assert "Skipped while reading this run" in page

    md = Path(written["markdown"]).read_text()
    assert "| Round | Labels | Label fraction | Test accuracy |" in md and "| 2 | 16 | 4.00% | 75.00% |" in md
    assert "![learning curve](learning_curve.png)" in md

    csv_text = Path(written["rounds_csv"]).read_text().splitlines()
    assert csv_text[0].startswith("run,strategy,round,num_labeled,label_fraction,test_accuracy")
    assert len(csv_text) == 4 and csv_text[3].startswith("hal_run,hal,2,16,0.04,0.75,")


def test_runs_with_zero_or_one_round_and_several_runs(tmp_path: Path) -> None:
    full = make_run(tmp_path / "a", name="run")
    one = make_run(tmp_path / "b", name="run", rounds=1, strategy="random")
    empty = tmp_path / "fresh"
    empty.mkdir()
    (empty / "state.json").write_text('{"round": 0, "stage": "train", "status": "running"}')
    (empty / "metrics.jsonl").write_text("")
    written = build_report([str(full), str(one), str(empty)], str(tmp_path / "cmp"))
    assert {"query_classes/run", "query_classes/run-2", "query_classes/fresh"} <= set(written)
    for key in ("learning_curve", "query_classes/run-2", "query_classes/fresh"):
        _valid_png(written[key])
    page = Path(written["html"]).read_text()
    assert "run-2 (random)" in page and "fresh (?)" in page
    assert page.count("no completed rounds yet") == 1

    alone = build_report([str(empty)], str(tmp_path / "alone"))
    _valid_png(alone["learning_curve"])
    assert "no completed rounds yet" in Path(alone["markdown"]).read_text()


def test_missing_run_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StateError, match="run directory not found: .*nope"):
        build_report([str(tmp_path / "nope")], str(tmp_path / "out"))
    with pytest.raises(StateError, match="no run directory"):
        build_report([], str(tmp_path / "out"))
    assert main([str(tmp_path / "nope")]) == 2
    assert "error: run directory not found" in capsys.readouterr().err


def test_cli_writes_into_the_first_run_by_default(tmp_path: Path) -> None:
    run = make_run(tmp_path, rounds=2)
    proc = subprocess.run(
        [sys.executable, "-m", "hssal_ray.report", str(run)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.split()
    assert str(run / "report" / "index.html") in printed and len(printed) == 5
    _valid_png(run / "report" / "learning_curve.png")
    assert "WARNING" in proc.stderr and "not valid JSON" in proc.stderr


def test_damaged_run_files_do_not_crash_the_report(tmp_path: Path) -> None:
    run = tmp_path / "damaged"
    (run / "round_000").mkdir(parents=True)
    (run / "round_000" / "labels.csv").write_text("id,class\nx,forest\n")  # wrong columns
    (run / "round_000" / "query.csv").write_bytes(b"\xff\xfe garbage")
    (run / "state.json").write_text("[1, 2]")
    (run / "config.yaml").write_text("query: [unclosed\n")
    (run / "labeled.parquet").write_bytes(b"not parquet")
    (run / "metrics.jsonl").write_text(
        '{"round": 0, "num_labeled": 10, "test_accuracy": 0.4, "mask_rate": NaN}\n'
    )
    written = build_report([str(run)], str(tmp_path / "out"))
    page = Path(written["html"]).read_text()
    assert "<td>40.00%</td><td>—</td>" in page  # label fraction missing; NaN mask rate shown as missing
    for problem in (
        "state.json is not a JSON object",
        "cannot read config.yaml",
        "cannot read labeled.parquet",
    ):
        assert problem in page
    _valid_png(written["query_classes/damaged"])


def test_final_round_queries_nothing_and_each_round_shows_its_own_answers(tmp_path: Path) -> None:
    run = make_run(tmp_path, rounds=3, final_round=True)  # rounds 0-2 query; round 3 is the last
    data = load_run(str(run), "hal_run")
    assert [r["round"] for r in data.rounds] == [0, 1, 2, 3]
    assert sorted(data.queries) == [0, 1, 2]  # the cold start and the final round are no round's query
    assert data.queries[1] == Counter(forest=3, river=1)  # from labeled.parquet (round_added 2)
    assert data.queries[2] == Counter(forest=2, river=2)  # from labels.csv
    _, rows = _queries_table(data)
    assert [row[0] for row in rows] == ["0", "1", "2"]
    page = Path(build_report([str(run)], str(tmp_path / "out"))["html"]).read_text()
    assert page.count("forest 2, river 2") == 1  # the final round does not repeat round 2's query


@pytest.mark.parametrize(("num_classes", "name_len"), [(8, 20), (30, 70)])
def test_query_class_names_never_overlap_and_stay_inside_the_figure(num_classes: int, name_len: int) -> None:
    names = [("sparse_residential_" * 8)[: name_len - 3] + f"{i:03d}" for i in range(num_classes)]
    run = RunData(path="r", name="r", class_names=names)
    run.queries = {r: Counter({c: 1 + (i + r) % 3 for i, c in enumerate(names)}) for r in range(4)}
    fig = query_classes_figure(run)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = [t for ax in fig.axes[:1] for t in (*ax.get_xticklabels(), *ax.get_yticklabels()) if t.get_text()]
    names_shown = [t for t in ticks if t.get_text()[:3] == names[0][:3]]
    assert len(names_shown) == num_classes
    boxes = [t.get_window_extent(renderer) for t in names_shown]
    for i, a in enumerate(boxes):
        assert fig.bbox.contains(a.x0, a.y0) and fig.bbox.contains(a.x1, a.y1), names_shown[i].get_text()
        for j in range(i + 1, len(boxes)):
            assert not a.overlaps(boxes[j]), (names_shown[i].get_text(), names_shown[j].get_text())
    assert len({t.get_text() for t in names_shown}) == num_classes  # shortened names stay distinct
