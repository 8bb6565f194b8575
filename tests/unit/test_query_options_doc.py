"""docs/QUERY_OPTIONS.md names every ``query.*`` field with its real default and the profile's value."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from hssal_ray.config.loop import QueryConfig

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "QUERY_OPTIONS.md"
PROFILE = ROOT / "configs" / "ucm_cpu.yaml"


def _rows(text: str) -> dict[str, dict[str, str]]:
    """The options table: option -> {column: cell}, cells without their backticks."""
    lines = [ln for ln in text.splitlines() if ln.startswith("| `") or ln.startswith("| option |")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        assert len(cells) == len(header), f"{ln!r}: {len(cells)} cells, header has {len(header)}"
        row = dict(zip(header, cells, strict=True))
        rows[row["option"].strip("`")] = row
    return rows


def _yaml(value: object) -> str:
    """How the table writes a value: YAML's spelling (``false``, ``0.02``), no quotes."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _strip(cell: str) -> str:
    return cell.strip().strip("`")


def test_rows_parse_as_the_table_is_written():
    rows = _rows("| option | default |\n|---|---|\n| `a` | `1` |\n| `b` | `false` |\n")
    assert rows == {"a": {"option": "`a`", "default": "`1`"}, "b": {"option": "`b`", "default": "`false`"}}
    with pytest.raises(AssertionError, match="cells"):
        _rows("| option | default |\n| `a` | `1` | extra |\n")


def test_every_query_field_has_a_row_and_no_row_is_stale():
    rows = _rows(DOC.read_text(encoding="utf-8"))
    fields = [f.name for f in dataclasses.fields(QueryConfig)]
    assert sorted(rows) == sorted(fields), (
        f"missing: {sorted(set(fields) - set(rows))}, not a field: {sorted(set(rows) - set(fields))}"
    )


def test_defaults_are_the_dataclass_defaults():
    rows = _rows(DOC.read_text(encoding="utf-8"))
    for f in dataclasses.fields(QueryConfig):
        assert _strip(rows[f.name]["default"]) == _yaml(f.default), f.name


def test_profile_column_is_configs_ucm_cpu():
    rows = _rows(DOC.read_text(encoding="utf-8"))
    profile = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))["query"]
    for name, row in rows.items():
        cell = _strip(row["profile"])
        if name in profile:
            assert cell == _yaml(profile[name]), name
        else:
            assert cell == "(default)", f"{name}: the profile does not set it, the table says {cell!r}"


def test_enumerated_values_are_the_literal_choices():
    """Where a field is a ``Literal``, the values column lists exactly its choices (and bool's)."""
    rows = _rows(DOC.read_text(encoding="utf-8"))
    hints = QueryConfig.__annotations__
    for name, hint in hints.items():
        choices = set(re.findall(r"'([^']+)'", str(hint)))
        if not choices:
            continue
        if "bool" in str(hint):
            choices |= {"true", "false"}
        listed = {_strip(v) for v in rows[name]["values"].split(",")}
        assert listed == choices, name
