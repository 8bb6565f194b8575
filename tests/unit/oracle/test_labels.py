"""Validation of untrusted human label files: every rejection names its rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hssal_ray.errors import LabelFileError
from hssal_ray.oracle import parse_label_file, write_labels_csv
from hssal_ray.oracle.labels import MAX_LISTED

CLASSES = ["beach", "forest", "river"]
QUERY = ["img_01", "img_02", "img_03"]


def _parse(
    path: Path, partial: str = "wait", query: list[str] | None = None, classes: list[str] | None = None
):
    return parse_label_file(
        str(path),
        query_ids=query or QUERY,
        class_names=classes or CLASSES,
        partial=partial,  # type: ignore[arg-type]
    )


def _write(tmp_path: Path, text: str | bytes, name: str = "labels.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return p


def _rejected(path: Path, *fragments: str, partial: str = "wait", **kw: object) -> str:
    with pytest.raises(LabelFileError) as info:
        _parse(path, partial=partial, **kw)  # type: ignore[arg-type]
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in:\n{msg}"
    assert "nothing was changed" in msg
    return msg


# ---------------------------------------------------------------- good files


def test_good_csv_with_bom_whitespace_extra_columns(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "\ufeff Sample_ID , rank, label \nimg_02,1, forest \n\nimg_01 ,2,beach\nimg_03,3,river\n"
    )
    ans = _parse(p)
    assert ans.labels == {"img_02": 1, "img_01": 0, "img_03": 2}
    assert ans.missing == [] and ans.source == "human"


def test_good_csv_semicolon_separated(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id;label\nimg_01;beach\nimg_02;forest\nimg_03;river\n")
    assert _parse(p).labels == {"img_01": 0, "img_02": 1, "img_03": 2}


def test_integer_indices_accepted_when_unambiguous(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_01,2\nimg_02,0\nimg_03,1\n")
    assert _parse(p).labels == {"img_01": 2, "img_02": 0, "img_03": 1}


def test_integer_looking_class_names_are_names(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_01,10\nimg_02,2\nimg_03,2\n")
    assert _parse(p, classes=["2", "10"]).labels == {"img_01": 1, "img_02": 0, "img_03": 0}


def _task(pos: int, sid: str, *annotations: dict) -> dict:
    return {
        "id": pos,
        "data": {"image": "data:image/png;base64,AAAA", "sample_id": sid},
        "annotations": list(annotations),
    }


def _ann(choice: str | list[str], updated: str, cancelled: bool = False) -> dict:
    choices = choice if isinstance(choice, list) else [choice]
    return {
        "id": 1,
        "was_cancelled": cancelled,
        "updated_at": updated,
        "result": [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": choices}}
        ],
    }


def test_label_studio_export_agreeing_annotations_count_once_cancelled_ignored(tmp_path: Path) -> None:
    tasks = [
        _task(1, "img_01", _ann("river", "2025-01-02T10:00:00Z"), _ann("river", "2025-01-01T10:00:00Z")),
        _task(
            2, "img_02", _ann("forest", "2025-01-01T10:00:00Z"), _ann("river", "2025-01-03T10:00:00Z", True)
        ),
        _task(3, "img_03", _ann("river", "2025-01-01T10:00:00.123456Z")),
    ]
    ans = _parse(_write(tmp_path, json.dumps(tasks), "export.json"))
    assert ans.labels == {"img_01": 2, "img_02": 1, "img_03": 2}


def test_label_studio_json_min_and_partial_continue(tmp_path: Path) -> None:
    tasks = [{"id": 1, "sample_id": "img_01", "label": "beach"}, {"id": 2, "sample_id": "img_02"}]
    ans = _parse(_write(tmp_path, json.dumps(tasks), "min.json"), partial="continue")
    assert ans.labels == {"img_01": 0}
    assert ans.missing == ["img_02", "img_03"]


def test_partial_continue_keeps_gaps(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_01,beach\nimg_02,\n")
    ans = _parse(p, partial="continue")
    assert ans.labels == {"img_01": 0} and ans.missing == ["img_02", "img_03"]


def test_write_labels_csv_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "round_001" / "labels.csv"
    write_labels_csv(str(out), {"img_03": 2, "img_01": 0}, CLASSES, order=QUERY)
    assert out.read_text() == "sample_id,label\nimg_01,beach\nimg_03,river\n"
    assert _parse(out, partial="continue").labels == {"img_01": 0, "img_03": 2}
    with pytest.raises(ValueError, match="out of range"):
        write_labels_csv(str(out), {"img_01": 7}, CLASSES)


# ---------------------------------------------------------------- rejections


def test_rejects_missing_file(tmp_path: Path) -> None:
    _rejected(tmp_path / "nope.csv", "nope.csv", "file not found")


def test_rejects_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    _rejected(tmp_path / "dir.csv", "a directory, not a regular file")


def test_rejects_empty_file(tmp_path: Path) -> None:
    _rejected(_write(tmp_path, "  \n"), "file is empty", "sample_id,label")


def test_rejects_binary_garbage(tmp_path: Path) -> None:
    _rejected(_write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "binary data", "offset 8")


def test_rejects_non_utf8(tmp_path: Path) -> None:
    _rejected(
        _write(tmp_path, "sample_id,label\nimg_01,for\xeat\n".encode("latin-1")),
        "not UTF-8",
        "line 2, offset 26",
    )


def test_rejects_utf16(tmp_path: Path) -> None:
    _rejected(_write(tmp_path, "sample_id,label\n".encode("utf-16")), "UTF-16", "UTF-8")


def test_rejects_missing_columns_naming_expected_and_found(tmp_path: Path) -> None:
    p = _write(tmp_path, "id,class\nimg_01,beach\n")
    _rejected(
        p,
        "line 1",
        "missing column(s) 'sample_id', 'label'",
        "expected header 'sample_id,label'",
        "'id', 'class'",
    )


def test_rejects_duplicate_columns(tmp_path: Path) -> None:
    _rejected(_write(tmp_path, "sample_id,label,label\nimg_01,beach,river\n"), "duplicate column(s) 'label'")


def test_rejects_unknown_class_with_suggestion_and_allowed_list(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_01,Forest\nimg_02,forrest\nimg_03,lake\n")
    msg = _rejected(
        p,
        "unknown class names (3)",
        "line 2 (sample_id 'img_01'): 'Forest', did you mean 'forest'?",
        "line 3 (sample_id 'img_02'): 'forrest', did you mean 'forest'?",
        "line 4 (sample_id 'img_03'): 'lake'",
        "allowed (case-sensitive): 'beach', 'forest', 'river'",
    )
    assert "'lake', did you mean" not in msg


def test_rejects_mixed_names_and_indices(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_01,beach\nimg_02,1\nimg_03,river\n")
    _rejected(p, "line 3 (sample_id 'img_02'): '1'", "only if every label in the file is one")


def test_rejects_index_out_of_range(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_01,0\nimg_02,3\nimg_03,-1\n")
    _rejected(p, "class indices out of range (2)", "line 3 (sample_id 'img_02'): 3", "line 4", "valid: 0..2")


def test_rejects_ids_not_in_query(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "sample_id,label\nimg_01,beach\nimg_02,forest\nimg_03,river\nimg_99,river\nIMG_01,beach\n"
    )
    _rejected(
        p,
        "(CSV) rejected",
        "not in this round's query (nor in an earlier round's) (2)",
        "line 5 (sample_id 'img_99')",
        "line 6 (sample_id 'IMG_01')",
    )


def test_repeated_rows_count_once_when_they_agree_and_are_rejected_when_they_conflict(tmp_path: Path) -> None:
    ok = _write(tmp_path, "sample_id,label\nimg_01,beach\nimg_02,forest\nimg_03,river\nimg_02,forest\n")
    assert _parse(ok).labels == {"img_01": 0, "img_02": 1, "img_03": 2}
    p = _write(
        tmp_path, "sample_id,label\nimg_01,beach\nimg_02,forest\nimg_03,river\nimg_01,river\nimg_02,forest\n"
    )
    msg = _rejected(
        p, "conflicting answers for one sample (1)", "sample_id 'img_01': 'beach' (line 2), 'river' (line 5)"
    )
    assert "img_02" not in msg


def test_rejects_empty_labels_when_waiting(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_01,beach\nimg_02,  \nimg_03\n")
    _rejected(p, "empty labels", "line 3 (sample_id 'img_02')", "line 4 (sample_id 'img_03')")


def test_rejects_rows_without_sample_id(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_01,beach\n,forest\nimg_02,forest\nimg_03,river\n,\n")
    _rejected(p, "rows without a sample_id (1)", "line 3 (label 'forest')")


def test_rejects_missing_rows_when_waiting(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_02,forest\n")
    msg = _rejected(
        p,
        "(CSV) rejected",
        "queried ids without a label (2)",
        "'img_01' (no row)",
        "'img_03' (no row)",
        "add a row with a class name for each",
        "add oracle.partial=continue to the --resume command",
    )
    assert "partial='continue'" not in msg


def test_rejects_entirely_empty_answer_even_when_continuing(tmp_path: Path) -> None:
    _rejected(_write(tmp_path, "sample_id,label\n"), "no labels at all", partial="continue")
    _rejected(_write(tmp_path, "sample_id,label\nimg_01,\nimg_02,\n"), "no labels at all", partial="continue")
    _rejected(_write(tmp_path, "[]", "empty.json"), "no labels at all", partial="continue")


def test_caps_the_listed_rows(tmp_path: Path) -> None:
    rows = "".join(f"x{i},beach\n" for i in range(MAX_LISTED + 5))
    msg = _rejected(
        _write(tmp_path, "sample_id,label\n" + rows), "(15)", "line 11 (sample_id 'x9')", "... and 5 more"
    )
    assert "'x10'" not in msg


def test_reports_all_problems_at_once(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id,label\nimg_01,Beach\nimg_02,forest\nimg_02,river\nimg_77,river\n")
    msg = _rejected(
        p, "(4 problems;", "unknown class", "conflicting", "not in this round's query", "without a label"
    )
    assert msg.count("\n  - ") == 4


def test_rejects_invalid_json(tmp_path: Path) -> None:
    _rejected(_write(tmp_path, '[{"id": 1,', "export.json"), "not valid JSON", "line 1")


def test_rejects_json_of_the_wrong_shape(tmp_path: Path) -> None:
    _rejected(
        _write(tmp_path, '{"tasks": []}', "export.json"), "expected a JSON list of tasks", "JSON object"
    )
    _rejected(_write(tmp_path, "42", "export.json"), "got a JSON int")


def test_rejects_malformed_label_studio_tasks(tmp_path: Path) -> None:
    tasks = [
        "not a task",
        {"id": 7, "data": {"image": "x.png"}, "annotations": []},
        {"id": 8, "data": {"sample_id": "img_01"}, "annotations": {"oops": 1}},
        _task(9, "img_02", _ann(["beach", "river"], "2025-01-01T00:00:00Z")),
        _task(10, "img_03", {"result": [{"value": {"choices": []}}]}),
        _task(11, "img_404", _ann("beach", "2025-01-01T00:00:00Z")),
    ]
    _rejected(
        _write(tmp_path, json.dumps(tasks), "export.json"),
        "task #1: not a JSON object",
        "task #2 (id 7): no data.sample_id",
        "task #3 (id 8) (sample_id 'img_01'): 'annotations' is not a list",
        "more than one class chosen (1): task #4 (id 9) (sample_id 'img_02'): 2 choices",
        "empty labels (1): task #5 (id 10) (sample_id 'img_03')",
        "task #6 (id 11) (sample_id 'img_404')",
    )


def test_rejects_bad_partial_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="partial"):
        _parse(_write(tmp_path, "sample_id,label\nimg_01,beach\n"), partial="maybe")


def test_rejects_json_nested_too_deeply(tmp_path: Path) -> None:
    _rejected(_write(tmp_path, "[" * 100_000 + "]" * 100_000, "export.json"), "nested too deeply")
    # a CSV label cell Label Studio wrote as JSON, nested too deeply: an unknown class, not a crash
    cell = '"{""choices"": ' + "[" * 100_000 + "]" * 100_000 + '}"'
    _rejected(_write(tmp_path, f"sample_id,label\nimg_01,{cell}\n"), "unknown class")


def test_rejects_what_is_not_a_regular_file_without_opening_it_for_reading(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)  # no writer: a plain open() would block for ever
    _rejected(fifo, "named pipe (FIFO), not a regular file", "pass the exported label file itself")
    _rejected(Path("/dev/zero"), "a character device, not a regular file")


def test_rejects_files_over_the_size_limit_before_reading_them(tmp_path: Path) -> None:
    from hssal_ray.oracle.labels import MAX_LABEL_FILE_BYTES, check_label_file

    p = _write(tmp_path, "sample_id,label\nimg_01,beach\nimg_02,forest\nimg_03,river\n")
    check_label_file(str(p))
    with open(p, "r+b") as f:
        f.truncate(MAX_LABEL_FILE_BYTES + 1)
    msg = _rejected(p, "over the 64 MiB limit for label files", "export only this round's tasks")
    assert f"{MAX_LABEL_FILE_BYTES + 1:,} bytes" in msg
    with pytest.raises(LabelFileError, match="over the 64 MiB limit"):
        check_label_file(str(p))
    with open(p, "r+b") as f:
        f.truncate(MAX_LABEL_FILE_BYTES)  # at the limit: read (and rejected for its NUL bytes)
    _rejected(p, "binary data")
