"""Type inference, coercion and promotion on real Arrow arrays."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from lakegate.normalize import TIMESTAMP, coerce, infer, type_from_str, type_to_str


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1", "2", "-3", None], pa.int32()),
        (["1", "3000000000"], pa.int64()),
        (["1", "2.5", "-1e3"], pa.float64()),  # mixed ints and floats: the wider type
        (["true", "False", "TRUE"], pa.bool_()),
        (["2024-01-01", "2023-12-31"], pa.date32()),
        (["2024-01-01T10:00:00Z", "2024-01-01 11:00:00.5+02:00"], TIMESTAMP),
        (["2024-01-01T10:00:00", "2024-01-01T10:00:00.123456789"], TIMESTAMP),
        (["2024-01-01", "2024-01-01T10:00:00Z"], TIMESTAMP),  # dates and instants: the wider type
        (["007", "008"], pa.string()),  # leading zeros: identifiers, not numbers
        (["0x10"], pa.string()),
        (["-007", "1"], pa.string()),
        (["0", "-0", "10"], pa.int32()),
        (["+5", "6"], pa.int32()),
        (["99999999999999999999", "1"], pa.string()),  # beyond long: not a lossy double
        (["0.5", "-0.25", "NaN"], pa.float64()),
        (["1", "abc"], pa.string()),
        (["1", "true"], pa.string()),
        (["12", " 13 ", ""], pa.int32()),  # padding trimmed, blanks are missing values
        (["", "  ", None], None),  # nothing yet: no type
    ],
)
def test_strings_infer_the_narrowest_type_every_value_fits(values: list[str | None], expected: object) -> None:
    assert infer(pa.array(values, pa.string())) == expected


def test_inference_looks_past_the_head_of_a_large_sample() -> None:
    values = [str(i) for i in range(5000)] + ["12.5"]
    assert infer(pa.array(values)) == pa.float64()
    assert infer(pa.array(["2024-01-01"] * 300 + ["2024-01-01T10:00:00Z"])) == TIMESTAMP
    assert infer(pa.array(["1.5"] * 300 + ["2", "-3"])) == pa.float64()
    assert infer(pa.array(["true"] * 300 + ["maybe"] * 20)) == pa.string()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["12.5"] * 97 + ["twelve", "n/a", "12,50 EUR"], pa.float64()),  # 97%: numbers win
        (["12"] * 97 + ["twelve", "n/a", "12,50 EUR"], pa.int32()),
        (["12"] * 90 + ["1.5"] * 7 + ["twelve"] * 3, pa.float64()),  # ints + floats count as doubles
        (["12.5"] * 94 + ["n/a"] * 6, pa.string()),  # 94%: too many misfits, text it is
        (["true"] * 18 + ["maybe"], pa.string()),  # 19 values: too few to overrule a misfit
        (["true"] * 20 + ["maybe"], pa.bool_()),
        (["2024-01-01T00:00:00Z"] * 50 + ["2024-01-02"] * 49 + ["soon"], TIMESTAMP),
        (["007"] * 99 + ["x"], pa.string()),  # identifiers stay text
    ],
)
def test_a_few_outliers_do_not_decide_the_type(values: list[str], expected: object) -> None:
    assert infer(pa.array(values)) == expected


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (pa.array([1, 2], pa.int64()), pa.int32()),
        (pa.array([1, 2**40], pa.int64()), pa.int64()),
        (pa.array([1, 2], pa.int8()), pa.int32()),
        (pa.array([1.5], pa.float32()), pa.float32()),
        (pa.array([1.5], pa.float64()), pa.float64()),
        (pa.array(["a"], pa.large_string()), pa.string()),
        (pa.array([b"a"], pa.large_binary()), pa.binary()),
        (pa.array([0], pa.timestamp("s")), TIMESTAMP),
        (pa.array([0], pa.timestamp("ns", tz="Europe/Paris")), TIMESTAMP),
        (pa.array([Decimal("1.25")], pa.decimal128(5, 2)), pa.decimal128(5, 2)),
        (pa.array([[1, 2], None], pa.list_(pa.int64())), pa.list_(pa.int32())),
        (pa.array([["1", "x"]], pa.large_list(pa.string())), pa.list_(pa.string())),
        (pa.array([None, None], pa.null()), None),
        (pa.array([[], None], pa.list_(pa.int64())), None),
    ],
)
def test_typed_arrays_get_iceberg_compatible_types(array: pa.Array, expected: object) -> None:
    assert infer(array) == expected


def test_naive_strings_are_read_in_the_configured_zone() -> None:
    values = pa.array(["2024-01-15T12:00:00", "2024-07-15T12:00:00", "2024-01-15T12:00:00+00:00"])
    out = coerce(values, TIMESTAMP, zone="Europe/Paris")
    assert out.array.to_pylist() == [
        datetime(2024, 1, 15, 11, tzinfo=UTC),  # CET = UTC+1
        datetime(2024, 7, 15, 10, tzinfo=UTC),  # CEST = UTC+2
        datetime(2024, 1, 15, 12, tzinfo=UTC),  # an explicit offset wins
    ]
    assert len(out.bad) == 0


def test_offsets_are_normalized_to_utc() -> None:
    values = pa.array(["2024-01-01T10:00:00+02:00", "2024-01-01T10:00:00-0530", "2024-01-01T10:00:00Z"])
    out = coerce(values, TIMESTAMP, zone="America/New_York")
    assert out.array.to_pylist() == [
        datetime(2024, 1, 1, 8, tzinfo=UTC),
        datetime(2024, 1, 1, 15, 30, tzinfo=UTC),
        datetime(2024, 1, 1, 10, tzinfo=UTC),
    ]


def test_values_that_fit_are_converted_and_misfits_reported_by_index() -> None:
    out = coerce(pa.array(["42", "abc", None, "12.0", "12.5", "", " 7 ", "1e3"]), pa.int32())
    assert out.type == pa.int32()
    assert out.bad.tolist() == [1, 4]
    assert out.array.to_pylist() == [42, None, None, 12, None, None, 7, 1000]

    floats = coerce(pa.array([12.0, 12.5, float("nan"), None, 3.0]), pa.int32())
    assert floats.bad.tolist() == [1, 2]
    assert floats.array.to_pylist() == [12, None, None, None, 3]

    booleans = coerce(pa.array(["true", "yes-ish", "No", "0", None]), pa.bool_())
    assert booleans.bad.tolist() == [1]
    assert booleans.array.to_pylist() == [True, None, False, False, None]

    dates = coerce(pa.array(["2024-02-29", "2023-02-29", "soon"]), pa.date32())
    assert dates.bad.tolist() == [1, 2]
    assert dates.array.to_pylist()[0] == date(2024, 2, 29)


def test_anything_fits_a_string_column() -> None:
    out = coerce(pa.array([1, 2, None]), pa.string())
    assert out.array.to_pylist() == ["1", "2", None] and len(out.bad) == 0
    nested = coerce(pa.array([{"a": [1, 2]}]), pa.string())
    assert nested.array.to_pylist() == ['{"a":[1,2]}']
    assert coerce(pa.array([b"ok", b"\xff\xfe"]), pa.string()).bad.tolist() == [1]


def test_int_beyond_int32_promotes_to_long() -> None:
    out = coerce(pa.array([1, 3_000_000_000, None], pa.int64()), pa.int32())
    assert out.type == pa.int64()
    assert out.array.to_pylist() == [1, 3_000_000_000, None]
    assert len(out.bad) == 0
    assert coerce(pa.array(["9" * 30]), pa.int32()).bad.tolist() == [0]  # beyond long: a misfit


def test_double_values_promote_float_to_double() -> None:
    exact = coerce(pa.array([0.5, 2.0]), pa.float32())
    assert exact.type == pa.float32()
    out = coerce(pa.array([0.5, 0.1]), pa.float32())
    assert out.type == pa.float64()
    assert out.array.to_pylist() == [0.5, 0.1]


def test_decimal_widens_precision_but_never_scale() -> None:
    target = pa.decimal128(5, 2)
    fits = coerce(pa.array(["123.45", "-1.5"]), target)
    assert fits.type == target and len(fits.bad) == 0
    wider = coerce(pa.array(["1234567.89", "1.5", None]), target)
    assert wider.type == pa.decimal128(9, 2)
    assert wider.array.to_pylist() == [Decimal("1234567.89"), Decimal("1.50"), None]
    assert len(wider.bad) == 0
    scale = coerce(pa.array(["1.234", "2.5", "x"]), target)
    assert scale.type == target
    assert scale.bad.tolist() == [0, 2]
    from_floats = coerce(pa.array([0.1, 12.345, 99999.5]), target)
    assert from_floats.bad.tolist() == [1]
    assert from_floats.type == pa.decimal128(7, 2)


def test_list_elements_are_coerced_and_misfits_map_to_their_rows() -> None:
    lists = pa.array([["1", "2"], [], None, ["3", "x"], ["4000000000"]])
    out = coerce(lists, pa.list_(pa.int32()))
    assert out.type == pa.list_(pa.int64())
    assert out.bad.tolist() == [3]
    assert out.array.to_pylist() == [[1, 2], [], None, [3, None], [4_000_000_000]]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),  # seconds
        (1_700_000_000_123, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),  # ms
        (1_700_000_000_123_456, datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),  # us
        (1_700_000_000_123_456_789, datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),  # ns
        (1_700_000_000.5, datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
        ("1700000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ],
)
def test_epoch_numbers_by_magnitude(value: object, expected: datetime) -> None:
    out = coerce(pa.array([value]), TIMESTAMP, epoch=True)
    assert out.array.to_pylist() == [expected]
    plain = coerce(pa.array([value]), TIMESTAMP, epoch=False)
    assert plain.bad.tolist() == [0]  # a number is not a time unless the column says so


@pytest.mark.parametrize("name", ["boolean", "int", "long", "float", "double", "string", "binary", "date", "timestamp"])
def test_type_names_round_trip(name: str) -> None:
    assert type_to_str(type_from_str(name)) == name


def test_decimal_and_list_type_names() -> None:
    assert type_from_str("decimal(10, 2)") == pa.decimal128(10, 2)
    assert type_from_str("list<list<long>>") == pa.list_(pa.list_(pa.int64()))
    assert type_to_str(pa.list_(pa.decimal128(38, 9))) == "list<decimal(38,9)>"
    with pytest.raises(ValueError, match="unknown type"):
        type_from_str("varchar")
    with pytest.raises(ValueError, match="precision"):
        type_from_str("decimal(40,2)")


def test_wall_clock_times_in_a_dst_gap_or_overlap_resolve_forward_and_first() -> None:
    out = coerce(pa.array(["2024-03-31T02:30:00", "2024-10-27T02:30:00"]), TIMESTAMP, zone="Europe/Paris")
    assert out.array.to_pylist() == [
        datetime(2024, 3, 31, 1, 0, tzinfo=UTC),  # 02:30 does not exist: the first instant after the gap
        datetime(2024, 10, 27, 0, 30, tzinfo=UTC),  # 02:30 happens twice: the first one (CEST)
    ]


def test_unsigned_beyond_long_is_a_misfit() -> None:
    out = coerce(pa.array([1, 2**64 - 1], pa.uint64()), pa.int64())
    assert out.bad.tolist() == [1]
    assert out.array.to_pylist() == [1, None]
