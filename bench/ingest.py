"""Ingest benchmark: the same NDJSON files into an identically partitioned Iceberg table, three ways.

Contenders, each in its own subprocess (wall time of the ingest, peak RSS, rows read back):

- ``raw``: the floor. pyarrow's JSON reader, the nested object flattened to ``parent__child``
  columns, ``ts`` cast to timestamptz, one plain pyiceberg ``append`` per file into a table
  partitioned by ``day(ts)``. No governance, no exactly-once bookkeeping.
- ``dlt``: dlt's filesystem source as its docs recommend (``filesystem(...) | read_jsonl()``), into
  its filesystem destination with ``table_format="iceberg"``, partitioned with
  ``iceberg_adapter(..., iceberg_partition.day("ts"))``; telemetry off. dlt needs its own venv
  (``bench/requirements-dlt.txt``; created on first use) and is measured on a smaller slice.
- ``lakegate``: ``Pipeline.from_yaml(spec).run(until_idle=True)``; also run alone at 4x the rows for
  its peak RSS.

Prints a table, then as the last line one JSON object (rows, rows/s of each, lakegate's ratios to
the others, lakegate's peak RSS at 1x and 4x). Exits 1 when a contender that ran failed or landed
a row count other than the rows generated (the JSON line is printed all the same).

    python bench/ingest.py                        # 2,000,000 rows, dlt on 200,000
    python bench/ingest.py --quick                # 50,000 rows; dlt only if its venv exists
    python bench/ingest.py --rows 200000 --skip-4x --skip-dlt
    python bench/ingest.py --contender raw --data DIR --out DIR    # one contender (what the harness runs)

Only the standard library is imported at the top: the dlt contender runs this file with the dlt venv's
interpreter, which has neither lakegate nor the project's dependencies.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DLT_VENV = REPO / ".venv-bench-dlt"
DLT_REQUIREMENTS = REPO / "bench" / "requirements-dlt.txt"
TABLE = "events"
CONTENDERS = ("raw", "dlt", "lakegate")
DEFAULT_ROWS = 2_000_000
QUICK_ROWS = 50_000
DEFAULT_DLT_ROWS = 200_000

LAKEGATE_SPEC = """\
pipeline: bench
data_dir: {data_dir}
sources:
  - name: {table}
    path: {source}
    format: ndjson
tables:
  {table}:
    event_time: {{field: ts}}
checkpoint: {{interval: 30s, max_rows: 500000}}
"""


# ---------------------------------------------------------------------------------------------------
# Child side: one contender, in its own process.
# ---------------------------------------------------------------------------------------------------


def _data_files(data: Path) -> list[Path]:
    files = sorted(data.glob("*.ndjson"))
    if not files:
        raise SystemExit(f"no *.ndjson files in {data}")
    return files


def _flatten(table: Any) -> Any:
    """Nested structs become ``parent__child`` columns (as dlt and lakegate name them)."""
    import pyarrow as pa

    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    return table.rename_columns([name.replace(".", "__") for name in table.column_names])


def ingest_raw(data: Path, out: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.json as pj
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.transforms import DayTransform

    started = time.perf_counter()
    catalog = SqlCatalog(
        "bench",
        uri=f"sqlite:///{out / 'raw-catalog.db'}",
        warehouse=(out / "raw-warehouse").as_uri(),
    )
    catalog.create_namespace("bench")
    table = None
    for path in _data_files(data):
        batch = _flatten(pj.read_json(path))
        index = batch.schema.get_field_index("ts")
        batch = batch.set_column(index, "ts", batch.column(index).cast(pa.timestamp("us", tz="UTC")))
        if table is None:
            table = catalog.create_table(f"bench.{TABLE}", schema=batch.schema)
            with table.update_spec() as spec:
                spec.add_field("ts", DayTransform(), "ts_day")
        table.append(batch)
    seconds = time.perf_counter() - started
    assert table is not None
    return {"ingest_s": seconds, "ingest_peak_rss_mb": _peak_mb(), **_verify(catalog.load_table(f"bench.{TABLE}"))}


def ingest_dlt(data: Path, out: Path) -> dict[str, Any]:
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    from dlt.destinations.adapters import iceberg_adapter, iceberg_partition
    from dlt.sources.filesystem import filesystem, read_jsonl

    started = time.perf_counter()
    files = filesystem(bucket_url=data.resolve().as_uri(), file_glob="*.ndjson")
    events = (files | read_jsonl()).with_name(TABLE)
    # read_jsonl yields dicts; without the hint ts could stay text. Nested objects become
    # customer__name... columns through dlt's normalizer.
    events.apply_hints(columns={"ts": {"data_type": "timestamp", "timezone": True}})
    iceberg_adapter(events, partition=iceberg_partition.day("ts"))
    pipeline = dlt.pipeline(
        pipeline_name="bench_dlt",
        pipelines_dir=str(out / "dlt-pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=(out / "dlt-lake").as_uri()),
        dataset_name="bench",
    )
    info = pipeline.run(events, table_format="iceberg")
    seconds = time.perf_counter() - started
    info.raise_on_failed_jobs()
    return {
        "ingest_s": seconds,
        "dlt_version": dlt.__version__,
        "ingest_peak_rss_mb": _peak_mb(),
        **_verify(_table_from_files(out / "dlt-lake")),
    }


def ingest_lakegate(data: Path, out: Path) -> dict[str, Any]:
    spec = out / "lakegate.yaml"
    spec.write_text(
        LAKEGATE_SPEC.format(data_dir=json.dumps(str(out / "lakegate-data")), source=json.dumps(str(data)), table=TABLE)
    )
    from lakegate import Pipeline

    started = time.perf_counter()
    pipeline = Pipeline.from_yaml(spec)
    try:
        pipeline.run(until_idle=True)
    finally:
        close = getattr(pipeline, "close", None)
        if callable(close):
            close()
    seconds = time.perf_counter() - started
    return {"ingest_s": seconds, "ingest_peak_rss_mb": _peak_mb(), **_verify(_table_from_files(out / "lakegate-data"))}


def _peak_mb() -> float:
    """This process's peak RSS so far: taken right after the ingest, before the read-back check,
    whose full scan of the id column grows with the rows and is not part of ingesting."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _table_from_files(root: Path) -> Any:
    """The table named ``events`` under ``root``, opened from its newest metadata file (works whatever
    catalog wrote it)."""
    from pyiceberg.table import StaticTable

    found: dict[Path, list[Path]] = {}
    for meta in root.rglob("*.metadata.json"):
        if meta.parent.name == "metadata":
            found.setdefault(meta.parent.parent, []).append(meta)
    tables = [d for d in found if d.name == TABLE or d.name.startswith(f"{TABLE}-")]
    if len(tables) != 1:
        names = ", ".join(str(d.relative_to(root)) for d in found) or "none"
        raise RuntimeError(f"expected one Iceberg table named {TABLE!r} under {root}; found: {names}")

    def version(path: Path) -> tuple[int, float]:
        head = path.name.split("-", 1)[0]
        return (int(head) if head.isdigit() else -1, path.stat().st_mtime)

    newest = max(found[tables[0]], key=version)
    return StaticTable.from_metadata(str(newest))


def _verify(table: Any) -> dict[str, Any]:
    """Read the table back: row count, distinct ids (exactly once means no duplicates), layout."""
    import pyarrow.compute as pc

    started = time.perf_counter()
    ids = table.scan(selected_fields=("id",)).to_arrow().column("id")
    snapshot = table.current_snapshot()
    summary = snapshot.summary.additional_properties if snapshot and snapshot.summary else {}
    return {
        "rows": len(ids),
        "distinct_ids": pc.count_distinct(ids).as_py() if len(ids) else 0,
        "min_id": pc.min(ids).as_py() if len(ids) else None,
        "max_id": pc.max(ids).as_py() if len(ids) else None,
        "ts_type": str(table.schema().find_field("ts").field_type),
        "partition": str(table.spec()),
        "columns": [f.name for f in table.schema().fields],
        "snapshots": len(table.snapshots()),
        "data_files": int(summary.get("total-data-files", 0)),
        "verify_s": time.perf_counter() - started,
    }


def run_child(name: str, data: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"contender": name, "python": sys.executable}
    try:
        fn = {"raw": ingest_raw, "dlt": ingest_dlt, "lakegate": ingest_lakegate}[name]
        result.update(fn(data.resolve(), out.resolve()))
        result["ok"] = True
    except BaseException as err:  # reported to the harness, which goes on with the other contenders
        result.update(ok=False, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out / "result.json")
    print(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


# ---------------------------------------------------------------------------------------------------
# Harness side.
# ---------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _venv_has_dlt(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import dlt, pyiceberg"], capture_output=True)
    return probe.returncode == 0


def dlt_interpreter(explicit: str | None, may_install: bool) -> tuple[str | None, str]:
    """The Python that runs the dlt contender, and why (or why there is none)."""
    if explicit:
        return explicit, "--dlt-python"
    if importlib.util.find_spec("dlt") is not None:
        return sys.executable, "dlt installed in this interpreter"
    python = DLT_VENV / "bin" / "python"
    if _venv_has_dlt(python):
        return str(python), f"{DLT_VENV.name}"
    if not may_install:
        return None, f"dlt is not installed ({DLT_VENV.name} missing)"
    log(f"creating {DLT_VENV} from {DLT_REQUIREMENTS.name} (about a minute)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(DLT_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(DLT_REQUIREMENTS),
            ],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        return None, f"could not install dlt: {err}"
    return (str(python), DLT_VENV.name) if _venv_has_dlt(python) else (None, "dlt venv broken")


def run_contender(
    name: str,
    python: str,
    data: Path,
    out: Path,
    expected: int,
    timeout: float,
    label: str | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run one contender in its own process; its peak RSS comes from wait4() on that very child."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = dict(os.environ, RUNTIME__DLTHUB_TELEMETRY="false", DLT_DATA_DIR=str(out / "dlt-home"))
    cmd = [python, str(Path(__file__).resolve()), "--contender", name, "--data", str(data), "--out", str(out)]
    label = label or name
    log(f"{label}: {expected:,} rows ...")
    started = time.perf_counter()
    with (out / "child.log").open("wb") as child_log:
        proc = subprocess.Popen(cmd, stdout=child_log, stderr=subprocess.STDOUT, cwd=out, env=env)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {"contender": label, "expected": expected, "ok": False}
    result_file = out / "result.json"
    if result_file.exists():
        result.update(json.loads(result_file.read_text()))
    else:
        tail = (out / "child.log").read_text(errors="replace").strip().splitlines()[-15:]
        why = f"killed after {timeout:.0f} s" if proc.returncode == -9 else f"exit code {proc.returncode}"
        result["error"] = f"{why}: " + " | ".join(tail)
    result.update(
        contender=label,
        proc_s=time.perf_counter() - started,
        process_peak_rss_mb=usage.ru_maxrss / 1024.0,  # Linux: KiB; includes the read-back check
        peak_rss_mb=result.get("ingest_peak_rss_mb", usage.ru_maxrss / 1024.0),
        exit_code=proc.returncode,
    )
    if result.get("ok"):
        problems = []
        if result.get("rows") != expected:
            problems.append(f"read back {result.get('rows')} rows, expected {expected}")
        if result.get("distinct_ids") != expected:
            problems.append(f"{result.get('distinct_ids')} distinct ids, expected {expected}")
        if problems:
            result.update(ok=False, error="; ".join(problems))
        elif result.get("ingest_s"):
            result["rows_per_s"] = expected / result["ingest_s"]
    if result["ok"] and not keep:  # free the disk for the next contender
        shutil.rmtree(out, ignore_errors=True)
    if result["ok"]:
        log(
            f"{label}: {result['rows']:,} rows in {result['ingest_s']:.2f} s "
            f"({result['rows_per_s']:,.0f} rows/s), peak RSS {result['peak_rss_mb']:,.0f} MB; "
            f"ts {result['ts_type']}, partition {result['partition']!s}".replace("\n", " ")
        )
    else:
        log(f"{label}: FAILED: {str(result.get('error'))[:2000]}")
    return result


def measure(repeat: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Best of ``repeat`` runs of a contender (the shortest ingest); peak RSS is the highest of them.
    A failed run is the answer at once."""
    runs: list[dict[str, Any]] = []
    for _ in range(max(1, repeat)):
        result = run_contender(*args, **kwargs)
        if not result.get("ok"):
            return result
        runs.append(result)
    best = dict(min(runs, key=lambda r: r["ingest_s"]))
    if len(runs) > 1:
        best["runs_s"] = [round(r["ingest_s"], 3) for r in runs]
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


def _fmt(value: float | None, width: int, spec: str) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


def print_table(results: list[dict[str, Any]], skipped: dict[str, str]) -> None:
    header = f"{'contender':<14} {'rows':>11} {'seconds':>9} {'rows/s':>11} {'peak RSS MB':>12}  note"
    print(header)
    print("-" * len(header))
    for r in results:
        ok = r.get("ok")
        note = r.get("note", "")
        if r.get("runs_s"):
            best_of = f"best of {len(r['runs_s'])}: {', '.join(f'{t:.2f}' for t in r['runs_s'])} s"
            note = f"{best_of}; {note}" if note else best_of
        if not ok:
            note = "FAILED: " + str(r.get("error", "?")).splitlines()[0][:200]
        print(
            f"{r['contender']:<14} {r['expected']:>11,} "
            f"{_fmt(r.get('ingest_s') if ok else None, 9, '.2f')} "
            f"{_fmt(r.get('rows_per_s'), 11, ',.0f')} {_fmt(r.get('peak_rss_mb'), 12, ',.0f')}  {note}"
        )
    for name, why in skipped.items():
        print(f"{name:<14} {'-':>11} {'-':>9} {'-':>11} {'-':>12}  skipped: {why}")
    print(
        "rows: read back from the Iceberg table, each id exactly once; seconds: wall time of the ingest "
        "inside the contender's own process (imports and the read-back excluded); peak RSS: that process, "
        "measured right after the ingest (before the read-back check)."
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _rate(result: dict[str, Any] | None) -> float | None:
    if result and result.get("ok"):
        return round(result["rows_per_s"], 1)
    return None


def harness(args: argparse.Namespace) -> int:
    rows = args.rows if args.rows is not None else (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    dlt_rows = min(args.dlt_rows if args.dlt_rows is not None else DEFAULT_DLT_ROWS, rows)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lakegate-bench-", dir=args.workdir))
    sys.path.insert(0, str(REPO))
    from bench.gen_ndjson import generate

    contenders = [c.strip() for c in args.only.split(",")] if args.only else list(CONTENDERS)
    skipped: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    try:
        data = generate(work / "data", rows=rows, files=args.files, seed=args.seed)
        log(
            f"data: {data.rows:,} rows, {len(data.files)} files, {data.bytes / 1e6:,.0f} MB "
            f"in {data.seconds:.1f} s -> {data.path}"
        )

        for name in contenders:
            if name == "dlt":
                if args.skip_dlt:
                    skipped["dlt"] = "--skip-dlt"
                    continue
                python, why = dlt_interpreter(args.dlt_python, may_install=not args.quick)
                if python is None:
                    skipped["dlt"] = why
                    continue
                source = data.path
                if dlt_rows < rows:
                    sliced = generate(work / "data-dlt", rows=dlt_rows, files=args.files, seed=args.seed)
                    source = sliced.path
                result = measure(
                    args.repeat,
                    "dlt",
                    python,
                    source,
                    work / "out-dlt",
                    dlt_rows,
                    args.timeout,
                    keep=args.keep,
                )
                if dlt_rows < rows:
                    result["note"] = f"measured on a {dlt_rows:,}-row data set (same generator), not {rows:,}"
            else:
                result = measure(
                    args.repeat,
                    name,
                    sys.executable,
                    data.path,
                    work / f"out-{name}",
                    rows,
                    args.timeout,
                    keep=args.keep,
                )
            results.append(result)
            by_name[name] = result

        lakegate_1x = by_name.get("lakegate")
        if lakegate_1x is not None and args.skip_4x:
            skipped["lakegate 4x"] = "--skip-4x"
        elif lakegate_1x is not None and not lakegate_1x.get("ok"):
            skipped["lakegate 4x"] = "lakegate failed at 1x"
        elif lakegate_1x is not None:
            if not args.keep:  # room on disk for 4x the data
                shutil.rmtree(work / "data", ignore_errors=True)
                shutil.rmtree(work / "data-dlt", ignore_errors=True)
            data4 = generate(work / "data-4x", rows=4 * rows, files=args.files, seed=args.seed + 1)
            log(f"data 4x: {data4.rows:,} rows, {data4.bytes / 1e6:,.0f} MB in {data4.seconds:.1f} s")
            result = run_contender(  # once: it is there for its peak RSS
                "lakegate",
                sys.executable,
                data4.path,
                work / "out-lakegate-4x",
                4 * rows,
                args.timeout,
                label="lakegate 4x",
                keep=args.keep,
            )
            result["note"] = "alone, for its peak RSS at 4x the rows"
            results.append(result)
            by_name["lakegate_4x"] = result
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_table(results, skipped)
    lakegate, raw, dlt = (_rate(by_name.get(n)) for n in ("lakegate", "raw", "dlt"))
    lg, lg4 = by_name.get("lakegate"), by_name.get("lakegate_4x")
    summary = {
        "rows": rows,
        "lakegate_rows_per_s": lakegate,
        "raw_rows_per_s": raw,
        "dlt_rows_per_s": dlt,
        "vs_raw": _ratio(lakegate, raw),
        "vs_dlt": _ratio(lakegate, dlt),
        "peak_rss_mb": round(lg["peak_rss_mb"], 1) if lg and lg.get("ok") else None,
        "peak_rss_mb_4x": round(lg4["peak_rss_mb"], 1) if lg4 and lg4.get("ok") else None,
        "dlt_rows": dlt_rows if "dlt" in by_name else None,
        "rows_4x": 4 * rows if lg4 else None,
        "failed": [r["contender"] for r in results if not r.get("ok")],
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"summary": summary, "results": results}, indent=2, default=str))
    print(json.dumps(summary), flush=True)
    return 1 if summary["failed"] and not args.allow_fail else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        help=f"rows of the data set (default {DEFAULT_ROWS:,}; {QUICK_ROWS:,} with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_ROWS:,} rows; dlt only if already installed (never creates its venv)",
    )
    parser.add_argument("--skip-dlt", action="store_true")
    parser.add_argument("--skip-4x", action="store_true", help="skip lakegate alone at 4x the rows")
    parser.add_argument("--dlt-rows", type=int, help=f"rows for dlt, at most --rows (default {DEFAULT_DLT_ROWS:,})")
    parser.add_argument(
        "--dlt-python",
        help=f"interpreter with dlt (default: this one if it has dlt, "
        f"else {DLT_VENV.name}, created from {DLT_REQUIREMENTS.name} when missing)",
    )
    parser.add_argument("--only", help="comma-separated contenders to run (default: raw,dlt,lakegate)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each contender at 1x; the fastest is reported (default 1)",
    )
    parser.add_argument("--files", type=int, default=8, help="NDJSON files in the data set (default 8)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a contender is killed")
    parser.add_argument("--workdir", help="parent of the run's work dir (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--json-out", help="also write every contender's full result to this file")
    parser.add_argument("--allow-fail", action="store_true", help="exit 0 even when a contender failed")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contender:
        if args.data is None or args.out is None:
            parser.error("--contender needs --data and --out")
        return run_child(args.contender, args.data, args.out)
    if args.only:
        unknown = {c.strip() for c in args.only.split(",")} - set(CONTENDERS)
        if unknown:
            parser.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    return harness(args)


if __name__ == "__main__":
    sys.exit(main())
