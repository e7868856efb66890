"""Every DSL op (values, nulls, failures), composition, JSON round trip, strict parsing, tables."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pytest

from lakegate.schema import dsl
from lakegate.schema.dsl import FieldMapping, Program, ProgramError, TableTransform


def run(steps: list[Any], values: list[Any], t: pa.DataType | None = None) -> tuple[list[Any], list[bool]]:
    applied = Program(steps=steps).apply(pa.array(values, t))
    return applied.values.to_pylist(), applied.failed.tolist()


def test_cast_converts_exactly_or_fails() -> None:
    assert run([dsl.Cast(to="long")], ["12", " 7 ", "1.5", "x", None]) == ([12, 7, None, None, None], [0, 0, 1, 1, 0])
    assert run([dsl.Cast(to="string")], [1, None]) == (["1", None], [False, False])
    assert run([dsl.Cast(to="double")], ["1e3"]) == ([1000.0], [False])
    assert run([dsl.Cast(to="boolean")], ["Yes", "0", "maybe"]) == ([True, False, None], [False, False, True])
    assert run([dsl.Cast(to="date")], ["2020-02-29", "2020-02-30"])[0] == [date(2020, 2, 29), None]
    ts = run([dsl.Cast(to="timestamp")], ["2023-01-02T10:11:12.345Z"])[0][0]
    assert ts == datetime(2023, 1, 2, 10, 11, 12, 345000, tzinfo=UTC)
    assert str(run([dsl.Cast(to="decimal(6,2)")], [1.239])[0][0]) == "1.24"


def test_scale_offset_round() -> None:
    assert run([dsl.Scale(factor=100), dsl.Round(digits=0)], [12.34, None]) == ([1234, None], [False, False])
    assert run([dsl.Scale(factor=1.8), dsl.Offset(amount=32)], [100.0]) == ([212.0], [False])
    assert run([dsl.Round(digits=2)], [1.23456]) == ([1.23], [False])


def test_number_parsing_and_formatting() -> None:
    parse = dsl.ParseNumber(thousands=",", strip="$")
    assert run([parse], ["$1,234.50", "n/a", None]) == ([1234.5, None, None], [False, True, False])
    european = dsl.ParseNumber(thousands=".", decimal=",")
    assert run([european], ["1.234,5"])[0] == [1234.5]
    fmt = dsl.FormatNumber(decimals=2, thousands=",")
    assert run([fmt], [1234567.891, -1234.5, 0.0, None])[0] == ["1,234,567.89", "-1,234.50", "0.00", None]


def test_string_ops() -> None:
    assert run([dsl.Strip()], ["  a b  "])[0] == ["a b"]
    assert run([dsl.Strip(chars="#", side="left")], ["##x#"])[0] == ["x#"]
    assert run([dsl.Case(to="title")], ["new YORK"])[0] == ["New York"]
    assert run([dsl.Case(to="upper")], ["abc"])[0] == ["ABC"]
    assert run([dsl.Replace(old="-", new="/")], ["a-b-c"])[0] == ["a/b/c"]
    assert run([dsl.Replace(old=r"\s+", new=" ", regex=True)], ["a  \t b"])[0] == ["a b"]
    assert run([dsl.Extract(pattern=r"(\d+)-")], ["201-209", "x"]) == (["201", None], [False, True])
    assert run([dsl.SplitTake(separator="-", index=0)], ["201-209", "7"])[0] == ["201", "7"]
    assert run([dsl.SplitTake(separator="-", index=-1)], ["a-b-c"])[0] == ["c"]
    assert run([dsl.SplitTake(separator="-", index=1)], ["x", None]) == ([None, None], [True, False])
    assert run([dsl.Slice(start=0, stop=3)], ["abcdef"])[0] == ["abc"]
    assert run([dsl.Pad(width=5, fill="0")], ["42"])[0] == ["00042"]
    assert run([dsl.AddPrefix(text="ID-"), dsl.AddSuffix(text="!")], ["7", None])[0] == ["ID-7!", None]
    assert run([dsl.RemovePrefix(text="District ")], ["District 14", "15"])[0] == ["14", "15"]
    assert run([dsl.RemoveSuffix(text=" kg")], ["12 kg", "3"])[0] == ["12", "3"]


def test_dates_both_ways() -> None:
    parse = dsl.ParseDatetime(format="%d/%m/%Y")
    write = dsl.FormatDatetime(format="%Y-%m-%dT%H:%M:%S", fraction_digits=3)
    assert run([parse, write], ["24/06/1901", "31/02/2000", None]) == (
        ["1901-06-24T00:00:00.000", None, None],
        [False, True, False],
    )
    frac = run([dsl.ParseDatetime(format="%Y-%m-%d %H:%M:%S.%f")], ["2023-01-02 10:11:12.5"])[0][0]
    assert frac == datetime(2023, 1, 2, 10, 11, 12, 500000, tzinfo=UTC)
    assert run([dsl.FormatDatetime(format="%d %b %Y")], [date(2020, 3, 1)], pa.date32())[0] == ["01 Mar 2020"]


def test_epochs_and_excel_serial_days() -> None:
    excel = date(1899, 12, 30)
    to_days = dsl.DatetimeToNumber(unit="days", origin=excel)
    assert run([to_days], [date(1901, 6, 24)], pa.date32())[0] == [541]
    back = [dsl.NumberToDatetime(unit="days", origin=excel), dsl.Cast(to="date")]
    assert run(back, [541, None, 1e30]) == ([date(1901, 6, 24), None, None], [False, False, True])
    ms = run([dsl.NumberToDatetime(unit="milliseconds")], [1_700_000_000_123])[0][0]
    assert ms == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    seconds = dsl.DatetimeToNumber(unit="seconds")
    assert run([seconds], [ms], pa.timestamp("us", tz="UTC"))[0] == [1_700_000_000]


def test_recode_fill_and_null_if() -> None:
    recode = dsl.Recode(mapping=[("M", "male"), ("F", "female")])
    assert run([recode], ["M", "X", None]) == (["male", "X", None], [False, False, False])
    strict = dsl.Recode(mapping=[(1, "one")], default="fail")
    assert run([strict], [1, 2]) == (["one", None], [False, True])
    assert run([dsl.Recode(mapping=[(1, "a")], default="null")], [1, 2]) == (["a", None], [False, False])
    assert run([dsl.FillNull(value=0)], [1, None])[0] == [1, 0]
    assert run([dsl.NullIf(values=["", "N/A"])], ["a", "", "N/A"]) == (["a", None, None], [False, False, False])


def test_failures_propagate_and_wrong_types_never_raise() -> None:
    steps = [dsl.Cast(to="double"), dsl.Scale(factor=100), dsl.Round(digits=0), dsl.Cast(to="string")]
    assert run(steps, ["12.34", "oops", None]) == (["1234", None, None], [False, True, False])
    values, failed = run([dsl.Scale(factor=2)], ["a", None])
    assert values == [None, None] and failed == [True, False]
    applied = Program(steps=[dsl.Scale(factor=2)]).apply(pa.array(["a"]))
    assert "takes numeric values" in applied.errors[0]
    assert run([dsl.Case(to="upper")], [None, None], pa.null())[0] == [None, None]


def test_json_round_trip_and_describe() -> None:
    program = Program(
        steps=[
            dsl.Cast(to="double"),
            dsl.Scale(factor=0.01),
            dsl.Round(digits=2),
            dsl.NumberToDatetime(unit="days", origin=date(1899, 12, 30)),
            dsl.Recode(mapping=[("a", 1), (2, None)]),
        ]
    )
    text = program.model_dump_json()
    assert Program.parse(text) == program
    assert Program().describe() == "identity"
    assert Program(steps=program.steps[:3]).describe() == "cast(→double) | scale(×0.01) | round(2)"
    assert set(dsl.OPS) >= {"cast", "recode", "split_take", "format_datetime"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"steps":[{"op":"scale","factor":"x"}]}', "steps.0.scale.factor"),
        ('{"steps":[{"op":"eval","code":"1"}]}', "does not match any of the expected tags"),
        ('{"steps":[{"op":"case","to":"upper","extra":1}]}', "Extra inputs are not permitted"),
        ('{"steps":[{"op":"extract","pattern":"("}]}', "invalid regular expression"),
        ('{"steps":[{"op":"cast","to":"varchar"}]}', "unknown type"),
        ('{"steps":[{"op":"parse_datetime","format":"YYYY"}]}', "no % directive"),
        ('{"steps":[{"op":"round","digits":"2"}]}', "valid integer"),
    ],
)
def test_malformed_programs_are_rejected_clearly(text: str, fragment: str) -> None:
    with pytest.raises(ProgramError, match="invalid program") as err:
        Program.parse(text)
    assert fragment in str(err.value)


def test_output_type_checks_the_chain() -> None:
    assert Program(steps=[dsl.Cast(to="double"), dsl.Round(digits=0)]).output_type(pa.string()) == pa.int64()
    with pytest.raises(ProgramError, match="step 2 upper takes string"):
        Program(steps=[dsl.Scale(factor=2), dsl.Case(to="upper")]).output_type(pa.int64())


def test_table_transform_renames_maps_joins_and_drops() -> None:
    transform = TableTransform(
        mappings=[
            FieldMapping(target="customer_id", sources=["cust_id"]),
            FieldMapping(
                target="amount_cents",
                sources=["amount"],
                program=Program(steps=[dsl.Cast(to="double"), dsl.Scale(factor=100), dsl.Round(digits=0)]),
            ),
            FieldMapping(target="name", sources=["first", "last"]),
            FieldMapping(target="city", sources=["address__city"]),
        ],
        dropped=["junk"],
    )
    table = pa.table(
        {
            "cust_id": [1, 2, 3],
            "amount": ["1.50", "bad", None],
            "first": ["Ada", "Alan", None],
            "last": ["Lovelace", "Turing", "X"],
            "address__city": ["London", "Wilmslow", "Paris"],
            "junk": [0, 0, 0],
            "kept": ["k1", "k2", "k3"],
        }
    )
    out = transform.apply(table)
    assert out.table.column_names == ["kept", "customer_id", "amount_cents", "name", "city"]
    assert out.table.column("amount_cents").to_pylist() == [150, None, None]
    assert out.table.column("name").to_pylist() == ["Ada Lovelace", "Alan Turing", None]
    assert out.failed.tolist() == [False, True, False]
    assert out.failures == {"customer_id": 0, "amount_cents": 1, "name": 0, "city": 0}
    missing = TableTransform(mappings=[FieldMapping(target="x", sources=["absent"])]).apply(table)
    assert missing.failures == {"x": 3} and missing.failed.all()
    assert TableTransform.model_validate_json(transform.model_dump_json()) == transform
    with pytest.raises(ValueError, match="more than one mapping"):
        TableTransform(mappings=[FieldMapping(target="a", sources=["b"]), FieldMapping(target="a", sources=["c"])])
