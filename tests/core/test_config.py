"""Spec validation: good specs load with defaults, bad ones name the file, the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakegate.core.config import load_spec, parse_duration
from lakegate.core.errors import ConfigError


def test_minimal_spec_gets_defaults_and_resolves_paths(tmp_path: Path) -> None:
    spec_file = tmp_path / "p.yaml"
    spec_file.write_text("pipeline: orders\nsources:\n  - name: orders\n    path: incoming\n")
    spec = load_spec(spec_file)
    assert spec.sources[0].path == tmp_path / "incoming"
    assert spec.data_dir == tmp_path / "lakegate-data"
    assert spec.dead_letter_table == "orders__dead_letter"
    assert spec.checkpoint.interval == 10.0
    assert spec.catalog.type == "sql"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "pipeline: p\nsources:\n  - name: s\n    path: d\n    format: xml\n",
            "sources.0.format: Input should be 'ndjson'",
        ),
        (
            "pipeline: p\nsources:\n  - name: s\n    path: d\n    colour: red\n",
            "sources.0.colour: unknown field",
        ),
        ("pipeline: p\nsources: []\n", "sources: List should have at least 1 item"),
        ("pipeline: Bad-Name\nsources:\n  - name: s\n    path: d\n", "pipeline: String should match pattern"),
        (
            "pipeline: p\nsources:\n  - name: s\n    path: d\ncheckpoint:\n  interval: soon\n",
            "checkpoint.interval",
        ),
        (
            "pipeline: p\nsources:\n  - {name: s, path: d}\n  - {name: s, path: e}\n",
            "source names must be unique",
        ),
        (
            "pipeline: p\nsources:\n  - {name: s, path: d}\ntables:\n  s: {partition: weekly}\n",
            "tables.s.partition",
        ),
        ("- just\n- a list\n", "a pipeline spec is a mapping"),
        ("pipeline: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_spec_names_file_and_field(tmp_path: Path, body: str, expected: str) -> None:
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_spec(spec_file)
    assert str(spec_file) in str(info.value)
    assert expected in str(info.value)


def test_missing_spec_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read pipeline spec"):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), (7, 7.0)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds
