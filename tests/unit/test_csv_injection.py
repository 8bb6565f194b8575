"""CSV formula injection: every CSV the product writes for people shows formula-like cells as text,
and every CSV the loop reads back gives the original ids and class names."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hssal_ray import _csv
from hssal_ray.data.pipeline import BAD_DIR, collect_bad_samples
from hssal_ray.loop.context import RunContext
from hssal_ray.loop.query_files import read_query_ids, write_query
from hssal_ray.oracle import LABELS_FILE, TEMPLATE_FILE, HumanOracle
from hssal_ray.oracle._handoff import _read_query
from hssal_ray.oracle.labels import write_labels_csv
from hssal_ray.query import write_scores
from hssal_ray.query.scores_io import read_id_list
from hssal_ray.report import build_report

# Each starts with a character a spreadsheet evaluates (OWASP: = + - @ TAB CR), or with the escape
# character itself, which must survive a round trip too.
EVIL_IDS = [
    '=HYPERLINK("http://evil.example","x").png',
    "+cmd|' /C calc'!A0.jpg",
    "-2+3.png",
    "@SUM(1).tif",
    "\tleading_tab.png",
    "\rleading_cr.png",
    "'=already_quoted.png",
    "'plain_quote.png",
    "ok/normal.png",
]
EVIL_CLASSES = ['=HYPERLINK("http://evil","x")', "+cmd", "-2+3", "@SUM(1)", "\tTab", "'quoted", "beach"]


def _cells(text: str) -> list[str]:
    """Every cell as a spreadsheet would see it (plain CSV parsing, no unescaping)."""
    return [c for row in csv.reader(io.StringIO(text, newline="")) for c in row]


def _assert_no_formula(text: str, where: str) -> None:
    for cell in _cells(text):
        if cell.startswith(_csv.FORMULA_START):
            assert _csv._PLAIN_NUMBER.fullmatch(cell), f"{where}: cell {cell!r} would be evaluated"


def test_escape_marks_formula_cells_as_text_and_unescape_undoes_it_exactly() -> None:
    assert _csv.escape('=HYPERLINK("http://evil","x")') == '\'=HYPERLINK("http://evil","x")'
    for value in ["+cmd", "-2+3", "@SUM(1)", "\tx", "\rx", "'x", "'"]:
        assert _csv.escape(value) == "'" + value
    for value in ["-0.5", "+3", "1e-05", "-1.5E+3", "a=b", "beach", "", 7, -1, 0.5, None]:
        assert _csv.escape(value) == value  # numbers stay numbers; nothing else to escape
    for value in [*EVIL_IDS, *EVIL_CLASSES, "''=x", "'", "''", "-0.5", ""]:
        assert _csv.unescape(_csv.escape(value)) == value
    # a returned file may have lost the escape (a spreadsheet saved the text): both forms resolve
    known = {"=x", "'y"}
    assert _csv.resolve("'=x", known) == "=x" and _csv.resolve("=x", known) == "=x"
    assert _csv.resolve("''y", known) == "'y" and _csv.resolve("'y", known) == "'y"


def test_product_csvs_escape_every_formula_cell(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rd = run / "round_000"
    rd.mkdir(parents=True)
    write_query(str(rd), EVIL_IDS, [0.5] * len(EVIL_IDS), [-1] * len(EVIL_IDS))
    labels = {sid: i % len(EVIL_CLASSES) for i, sid in enumerate(EVIL_IDS)}
    write_labels_csv(str(rd / LABELS_FILE), labels, EVIL_CLASSES)
    HumanOracle(EVIL_CLASSES).request(str(rd), EVIL_IDS, {"round": 0})
    (run / BAD_DIR).mkdir()
    part = io.StringIO()
    csv.writer(part).writerows([sid, "=cmd reason"] for sid in EVIL_IDS[:3])
    (run / BAD_DIR / "bad_1.csv").write_bytes(part.getvalue().encode())
    assert collect_bad_samples(str(run)) == 3
    # the report's rounds.csv carries the run name and strategy
    (run / "classes.json").write_text(json.dumps(EVIL_CLASSES))
    row = {"round": 0, "num_labeled": 9, "test_accuracy": 0.5, "strategy": "=evil()", "wall_s": {"a": -1.0}}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    written = build_report([str(run)], str(tmp_path / "report"))

    files = {
        "query.csv": rd / "query.csv",
        "labels.csv": rd / LABELS_FILE,
        "labels_template.csv": rd / TEMPLATE_FILE,
        "bad_samples.csv": run / "bad_samples.csv",
        "rounds.csv": Path(written["rounds_csv"]),
    }
    for name, path in files.items():
        _assert_no_formula(path.read_bytes().decode(), name)
    assert "'=HYPERLINK" in (rd / TEMPLATE_FILE).read_bytes().decode()
    assert "'=evil()" in Path(written["rounds_csv"]).read_bytes().decode()
    assert ",-1\n" in (rd / "query.csv").read_bytes().decode()  # numeric cells are not escaped


def test_tune_trials_csv_escapes_formula_cells(tmp_path: Path) -> None:
    from hssal_ray.config import load_config
    from hssal_ray.tune._results import TrialRecord, _trials_csv
    from hssal_ray.tune._space import trial_config

    cfg = trial_config(load_config(None, []), {}, run_dir="/sweep")
    trial = TrialRecord("=t1", "@name", {"data.root": "=evil()"}, cfg, [], "error", error="boom")
    text = _trials_csv([trial], ["data.root"])
    _assert_no_formula(text, "trials.csv")
    assert "'=evil()" in text and "'=t1" in text


def test_query_cli_output_escapes_ids_and_id_lists_read_them_back(tmp_path: Path) -> None:
    from hssal_ray.query.__main__ import main

    path = tmp_path / "scores.parquet"
    n = len(EVIL_IDS)
    probs = np.linspace([0.9, 0.1], [0.5, 0.5], n).astype(np.float32)
    write_scores(str(path), EVIL_IDS, probs=probs)
    out = tmp_path / "picked.csv"
    assert main([str(path), "--strategy", "entropy", "--budget", str(n), "--out", str(out)]) == 0
    _assert_no_formula(out.read_bytes().decode(), "query CLI output")
    assert sorted(read_id_list(str(out))) == sorted(EVIL_IDS)


def test_round_trip_query_template_and_returned_labels_give_the_original_ids_and_classes(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    rd = run / "round_001"
    rd.mkdir(parents=True)
    write_query(str(rd), EVIL_IDS, None, None)
    assert read_query_ids(str(rd)) == EVIL_IDS
    assert list(_read_query(str(rd))) == EVIL_IDS
    assert read_id_list(str(rd / "query.csv")).tolist() == EVIL_IDS

    oracle = HumanOracle(EVIL_CLASSES)
    oracle.request(str(rd), EVIL_IDS, {"round": 1})
    template = _csv.read_rows((rd / TEMPLATE_FILE).read_bytes().decode())
    assert [r[0] for r in template[1:]] == EVIL_IDS
    want = {sid: i % len(EVIL_CLASSES) for i, sid in enumerate(EVIL_IDS)}

    # A person fills the template in a spreadsheet. It may save the cells escaped (as handed out) ...
    raw = list(csv.reader(io.StringIO((rd / TEMPLATE_FILE).read_bytes().decode(), newline="")))
    escaped = io.StringIO()
    w = csv.writer(escaped, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(raw[0])
    w.writerows(
        [cell, _csv.escape(EVIL_CLASSES[want[sid]])] for (cell, _), sid in zip(raw[1:], EVIL_IDS, strict=True)
    )
    # ... or with the escape dropped (the text as shown).
    plain = io.StringIO()
    w = csv.writer(plain, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(["sample_id", "label"])
    w.writerows([sid.strip(), EVIL_CLASSES[want[sid]]] for sid in EVIL_IDS if not sid[0].isspace())
    for name, text in [("escaped.csv", escaped.getvalue()), ("plain.csv", plain.getvalue())]:
        for p in rd.glob(LABELS_FILE):
            p.unlink()
        returned = tmp_path / name
        returned.write_bytes(text.encode())
        expect = {s: c for s, c in want.items() if name == "escaped.csv" or not s[0].isspace()}
        kw = {"partial": "continue"} if name == "plain.csv" else {}
        answer = HumanOracle(EVIL_CLASSES, **kw).import_labels(str(rd), EVIL_IDS, str(returned))
        assert answer.labels == expect, name
        # the stored labels.csv reads back the same
        again = HumanOracle(EVIL_CLASSES, **kw).collect(str(rd), EVIL_IDS)
        assert again is not None and again.labels == expect, name


def test_bad_samples_round_trip_through_bad_ids(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / BAD_DIR).mkdir(parents=True)
    buf = io.StringIO()
    csv.writer(buf).writerows([sid, "decode error"] for sid in EVIL_IDS)
    (run / BAD_DIR / "bad_1.csv").write_bytes(buf.getvalue().encode())
    assert collect_bad_samples(str(run)) == len(EVIL_IDS)
    (run / BAD_DIR / "bad_2.csv").write_text("new.png,x\n")
    assert collect_bad_samples(str(run)) == len(EVIL_IDS) + 1  # merging re-reads the escaped file
    ids = RunContext.bad_ids(SimpleNamespace(run_dir=str(run)))  # only reads run_dir
    assert ids == {*EVIL_IDS, "new.png"}


@pytest.mark.parametrize("value", ["=1+1", "'=1+1", "''", "-", "'-"])
def test_read_dicts_unescapes_values_and_header(value: str) -> None:
    buf = io.StringIO()
    _csv.writer(buf).writerows([["sample_id", "=h"], [value, "x"]])
    assert _csv.read_dicts(buf.getvalue()) == [{"sample_id": value, "=h": "x"}]
