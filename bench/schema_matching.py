"""Schema matching accuracy: lakegate's field matcher vs the valentine matchers that run offline.

Every pair folder under ``--data`` (laid out like ``shared/data/schema-matching/``: ``source_table.csv``,
``target_table.csv``, ``ground_truth.json``) is one task. The target table plays the learned contract
and the source table the incoming batch: lakegate profiles every target column
(``FieldProfile.from_values`` of the column as ``pyarrow.csv`` reads it; that profile is the "learned
contract profile") and runs ``match_fields`` on the source rows, shuffled with a fixed seed first (the
dev pairs happen to be row-aligned; nothing may rely on it). Valentine 1.0.1 (``Coma`` schema-only,
``JaccardDistanceMatcher``, ``DistributionBased``, ``SimilarityFlooding``; Cupid and Coma with
instances need NLTK data that cannot be downloaded here) matches the same two CSVs (the shuffled
source) in its own venv, ``.venv-bench-valentine`` (``bench/requirements-valentine.txt``), created on
first use (not with ``--quick``, which skips valentine when the venv is missing).

Every contender's predictions are written to ``--workdir`` before the ground truth is read. The scorer
then applies valentine's own definitions to both sides (``valentine/metrics``, 1.0.1):

* precision, recall, F1 over the one-to-one prediction set: TP = ground-truth pairs predicted, FP =
  predictions not in the ground truth, FN = ground-truth pairs not predicted. A valentine matcher's set
  is its ``one_to_one_hungarian()`` filter (Hungarian assignment over its scores, then pairs scoring at
  least the median of the distinct scores), re-implemented here identically; lakegate's set is its
  proposals (Hungarian with a no-match threshold, auto-applied and held alike);
* recall@GT: the top-|GT| pairs of the full score list (no one-to-one filter), TP / |GT|.

Overall figures pool the counts over all pairs. Transform accuracy: for each true match whose values
differ between the tables, the ground truth's ``transformation_code`` maps a target value t to its
source form s (pandas-read target values, as valentine's generator had them); lakegate's program of
its prediction for that source column must give t back from s (s typed as the source column is read).
A transformation counts as reproduced when it does for >= 90% of the target values; a true match
lakegate did not predict counts as not reproduced.

    python bench/schema_matching.py                       # all pairs, lakegate + valentine
    python bench/schema_matching.py --quick               # valentine only if its venv exists
    python bench/schema_matching.py --data DIR --seed 3

Last line: JSON with ``f1``, ``recall_at_gt``, ``best_valentine_matcher``, ``best_valentine_f1``,
``transform_accuracy``, ``n_matches`` (lakegate's figures unless named otherwise).

Only the standard library is imported at the top: valentine's venv runs this file too.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VALENTINE_VENV = REPO / ".venv-bench-valentine"
VALENTINE_REQUIREMENTS = Path(__file__).resolve().parent / "requirements-valentine.txt"
VALENTINE_MATCHERS = ("Coma", "JaccardDistanceMatcher", "DistributionBased", "SimilarityFlooding")
RESULT_PREFIX = "RESULT "
REPRODUCED_SHARE = 0.9


def default_data_dir() -> Path:
    env = os.environ.get("LAKEGATE_SCHEMA_MATCHING_DATA")
    return Path(env) if env else REPO / "bench" / "data" / "schema-matching"


def pair_dirs(data: Path) -> list[Path]:
    names = ("source_table.csv", "target_table.csv", "ground_truth.json")
    return sorted(d for d in data.iterdir() if d.is_dir() and all((d / n).exists() for n in names))


# ---------------------------------------------------------------------------------------------------
# Inputs


def shuffle_source(pair: Path, out: Path, seed: int) -> Path:
    """The source CSV with its data rows in a seeded random order (header first, bytes of rows kept)."""
    with (pair / "source_table.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    random.Random(seed).shuffle(body)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
    return out


# ---------------------------------------------------------------------------------------------------
# lakegate (project venv)


def run_lakegate(source_csv: Path, target_csv: Path) -> dict[str, Any]:
    """lakegate's proposals and full confidence list for one pair; sees only the two CSVs."""
    import pyarrow.csv as pacsv

    from lakegate.schema.matching import match_fields
    from lakegate.schema.profiles import FieldProfile

    target = pacsv.read_csv(target_csv)
    source = pacsv.read_csv(source_csv)
    started = time.perf_counter()
    profiles = {name: FieldProfile.from_values(target.column(name), name=name) for name in target.column_names}
    result = match_fields(source, profiles)
    elapsed = time.perf_counter() - started
    return {
        "predictions": [
            {
                "source": m.incoming,
                "target": m.target,
                "score": m.confidence,
                "status": m.status,
                "ambiguous": m.ambiguous,
            }
            for m in result.matches
        ],
        "scores": [[a, b, s] for a, b, s in result.ranked_pairs()],
        "details": result.to_dict(),
        "seconds": round(elapsed, 3),
    }


# ---------------------------------------------------------------------------------------------------
# valentine (its own venv)


def _valentine_python() -> Path:
    return VALENTINE_VENV / "bin" / "python"


def ensure_valentine_venv(create: bool) -> Path | None:
    """valentine's interpreter; the venv is created from ``requirements-valentine.txt`` when missing."""
    python = _valentine_python()
    probe = [str(python), "-c", "import valentine, pandas"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    if not create:
        return None
    print(f"creating {VALENTINE_VENV} from {VALENTINE_REQUIREMENTS.name} (about a minute)...", flush=True)
    base = os.environ.get("BENCH_PYTHON") or "python3.11"
    subprocess.run([base, "-m", "venv", str(VALENTINE_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(VALENTINE_REQUIREMENTS)], check=True)
    return python if subprocess.run(probe, capture_output=True).returncode == 0 else None


def valentine_child(source_csv: Path, target_csv: Path) -> int:
    """Runs in valentine's venv: every offline matcher's full score list for one pair."""
    import pandas as pd
    from valentine import valentine_match
    from valentine.algorithms import Coma, DistributionBased, JaccardDistanceMatcher, SimilarityFlooding

    source, target = pd.read_csv(source_csv), pd.read_csv(target_csv)
    matchers = {
        "Coma": lambda: Coma(use_instances=False),
        "JaccardDistanceMatcher": JaccardDistanceMatcher,
        "DistributionBased": DistributionBased,
        "SimilarityFlooding": SimilarityFlooding,
    }
    out: dict[str, Any] = {}
    for name, make in matchers.items():
        started = time.perf_counter()
        try:
            matches = valentine_match([source, target], make(), df_names=["source", "target"])
        except Exception as err:  # a peer's failure is reported, not fatal
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        scores = []
        for pair, score in matches.items():
            if pair.source_table == "source":
                scores.append([pair.source_column, pair.target_column, float(score)])
            else:
                scores.append([pair.target_column, pair.source_column, float(score)])
        out[name] = {"scores": scores, "seconds": round(time.perf_counter() - started, 3)}
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0


def run_valentine(python: Path, source_csv: Path, target_csv: Path, timeout: float) -> dict[str, Any]:
    command = [str(python), str(Path(__file__).resolve()), "--valentine-child", str(source_csv), str(target_csv)]
    try:
        env = dict(os.environ, PYTHONPATH="")
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {name: {"error": f"timed out after {timeout:.0f} s"} for name in VALENTINE_MATCHERS}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        return {name: {"error": f"exit {done.returncode}: {done.stderr[-1500:]}"} for name in VALENTINE_MATCHERS}
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    for name in VALENTINE_MATCHERS:
        result.setdefault(name, {"error": "no result"})
    for entry in result.values():
        if "scores" in entry:
            entry["predictions"] = [
                {"source": s, "target": t, "score": v} for s, t, v in valentine_one_to_one(entry["scores"])
            ]
    return result


def valentine_one_to_one(scores: list[list[Any]]) -> list[tuple[str, str, float]]:
    """valentine 1.0.1's ``MatcherResults.one_to_one_hungarian()`` (default threshold), re-implemented.

    Hungarian assignment maximizing total similarity (absent pairs score 0), then the pairs scoring at
    least the median distinct score (``sorted(set(scores), reverse=True)[ceil(n / 2)]``); with fewer
    than two distinct scores, every pair is kept, as valentine does.
    """
    from scipy.optimize import linear_sum_assignment

    ordered = sorted(((str(s), str(t), float(v)) for s, t, v in scores), key=lambda x: -x[2])
    if not ordered:
        return []
    sources = list(dict.fromkeys(s for s, _, _ in ordered))
    targets = list(dict.fromkeys(t for _, t, _ in ordered))
    sim = [[0.0] * len(targets) for _ in sources]
    lookup = {}
    for s, t, v in ordered:
        sim[sources.index(s)][targets.index(t)] = v
        lookup[(s, t)] = v
    rows, cols = linear_sum_assignment([[-x for x in row] for row in sim])
    distinct = set(lookup.values())
    if len(distinct) < 2:
        return ordered
    min_sim = sorted(distinct, reverse=True)[math.ceil(len(distinct) / 2)]
    selected = [
        (sources[r], targets[c], lookup[(sources[r], targets[c])])
        for r, c in zip(rows, cols, strict=False)
        if (sources[r], targets[c]) in lookup and lookup[(sources[r], targets[c])] >= min_sim
    ]
    return sorted(selected, key=lambda x: -x[2])


# ---------------------------------------------------------------------------------------------------
# Scoring (reads the ground truth; runs after every prediction is written)


def counts(predictions: list[dict[str, Any]], scores: list[list[Any]], truth: set[tuple[str, str]]) -> dict[str, int]:
    """TP/FP/FN of the one-to-one predictions and TP of the top-|GT| scored pairs (valentine's definitions)."""
    predicted = {(p["source"], p["target"]) for p in predictions}
    ranked = sorted(((s, t, v) for s, t, v in scores), key=lambda x: -x[2])  # stable, like valentine's dict
    top = {(s, t) for s, t, _ in ranked[: len(truth)]}
    return {
        "tp": len(truth & predicted),
        "fp": len(predicted - truth),
        "fn": len(truth - predicted),
        "tp_at_gt": len(truth & top),
        "gt": len(truth),
    }


def metrics(c: dict[str, int]) -> dict[str, float]:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    recall_at_gt = c["tp_at_gt"] / c["gt"] if c["gt"] else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "recall_at_gt": recall_at_gt}


def transform_checks(
    pair: Path, source_csv: Path, lakegate_result: dict[str, Any], truth: list[dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """Per true match whose values differ: did lakegate's program give the target values back?

    None when the DSL is not available (no programs to apply).
    """
    try:
        from lakegate.schema.dsl import Program
    except ImportError:
        return None
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    target_pd = pd.read_csv(pair / "target_table.csv")
    target_pa = pacsv.read_csv(pair / "target_table.csv")
    source_pa = pacsv.read_csv(source_csv)
    programs = {
        m["incoming"]: (m["target"], m["evidence"].get("program")) for m in lakegate_result["details"]["matches"]
    }
    checks = []
    for match in truth:
        code = match.get("transformation_code")
        if not code:
            continue
        src, tgt = match["source_column"], match["target_column"]
        inverse = eval(code, {"pd": pd})  # the ground truth's own lambda (target value -> source form)
        pairs: list[tuple[int, Any]] = []
        for index, value in enumerate(target_pd[tgt].tolist()):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            try:
                pairs.append((index, inverse(value)))
            except Exception:  # the lambda rejects some values: those cannot be checked
                continue
        if not pairs:
            continue
        differs = any(_text(s) != _text(target_pd[tgt].iloc[i]) for i, s in pairs)
        if not differs:
            continue
        source_type = source_pa.schema.field(src).type
        s_array = _typed(pa.array([_text(s) for _, s in pairs], pa.string()), source_type)
        expected = target_pa.column(tgt).combine_chunks().take(pa.array([i for i, _ in pairs]))
        predicted_target, program_json = programs.get(src, (None, None))
        check: dict[str, Any] = {"source": src, "target": tgt, "n": len(pairs), "predicted": predicted_target == tgt}
        share = 0.0
        if predicted_target == tgt:
            try:
                program = Program.model_validate_json(json.dumps(program_json)) if program_json is not None else None
                out = program.apply(s_array).values if program is not None else s_array
                share = _equal_share(out, expected)
            except Exception as err:  # a failing program reproduces nothing
                check["error"] = f"{type(err).__name__}: {err}"
        check["share"] = round(share, 4)
        check["reproduced"] = share >= REPRODUCED_SHARE
        checks.append(check)
    return checks


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _typed(strings: Any, arrow_type: Any) -> Any:
    """Source-form strings typed as lakegate reads the source column (string when they do not cast)."""
    import pyarrow.compute as pc

    try:
        return pc.cast(strings, arrow_type)
    except Exception:
        return strings


def _equal_share(out: Any, expected: Any) -> float:
    """Share of rows where the program's output equals the target value (numbers, times, or text)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(out, pa.ChunkedArray):
        out = out.combine_chunks()
    if len(expected) == 0:
        return 0.0
    same = None
    for kind in (pa.types.is_timestamp, pa.types.is_date):
        if kind(expected.type):
            try:
                left = pc.cast(pc.cast(out, pa.timestamp("us")), pa.int64())
                right = pc.cast(pc.cast(expected, pa.timestamp("us")), pa.int64())
                same = pc.equal(left, right)
            except Exception:
                same = None
    if same is None and (pa.types.is_integer(expected.type) or pa.types.is_floating(expected.type)):
        try:
            diff = pc.abs(pc.subtract(pc.cast(out, pa.float64()), pc.cast(expected, pa.float64())))
            tolerance = pc.add(pc.multiply(pc.abs(pc.cast(expected, pa.float64())), 1e-9), 1e-9)
            same = pc.less_equal(diff, tolerance)
        except Exception:
            same = None
    if same is None:
        left = pc.utf8_trim_whitespace(pc.cast(out, pa.string()))
        right = pc.utf8_trim_whitespace(pc.cast(expected, pa.string()))
        same = pc.equal(left, right)
    return float((pc.sum(pc.fill_null(same, False)).as_py() or 0) / len(expected))


# ---------------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="pair folders (default: bench/data)")
    parser.add_argument("--quick", action="store_true", help="skip valentine when its venv does not exist")
    parser.add_argument("--seed", type=int, default=0, help="seed of the source-row shuffle")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "schema_matching")
    parser.add_argument("--timeout", type=float, default=900.0, help="valentine's time per pair (seconds)")
    parser.add_argument("--skip-valentine", action="store_true")
    parser.add_argument("--valentine-child", nargs=2, metavar=("SOURCE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.valentine_child:
        return valentine_child(Path(args.valentine_child[0]), Path(args.valentine_child[1]))

    data = args.data or default_data_dir()
    if not data.is_dir():
        print(
            f"schema-matching data not found at {data}: pass --data DIR or set LAKEGATE_SCHEMA_MATCHING_DATA",
            file=sys.stderr,
        )
        return 2
    pairs = pair_dirs(data)
    if not pairs:
        print(f"no pair folder (source_table.csv, target_table.csv, ground_truth.json) under {data}", file=sys.stderr)
        return 2
    python = None if args.skip_valentine else ensure_valentine_venv(create=not args.quick)
    if python is None and not args.skip_valentine:
        print("valentine: venv missing (--quick): valentine columns are null", flush=True)

    # Step 1: every contender predicts, and the predictions are written, before any ground truth is read.
    runs: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        out = args.workdir / pair.name
        source_csv = shuffle_source(pair, out / "source_shuffled.csv", args.seed)
        target_csv = pair / "target_table.csv"
        run: dict[str, Any] = {"lakegate": run_lakegate(source_csv, target_csv)}
        if python is not None:
            run["valentine"] = run_valentine(python, source_csv, target_csv, args.timeout)
        (out / "predictions.json").write_text(json.dumps(run, indent=1, default=str))
        runs[pair.name] = run

    # Step 2: score.
    contenders = ["lakegate", *([f"valentine:{m}" for m in VALENTINE_MATCHERS] if python is not None else [])]
    pooled: dict[str, dict[str, int]] = {c: {"tp": 0, "fp": 0, "fn": 0, "tp_at_gt": 0, "gt": 0} for c in contenders}
    errors: dict[str, str] = {}
    transform_results: list[dict[str, Any]] = []
    transforms_available = True
    rows = []
    for pair in pairs:
        truth_doc = json.loads((pair / "ground_truth.json").read_text())
        truth = {(m["source_column"], m["target_column"]) for m in truth_doc["matches"]}
        run = runs[pair.name]
        for contender in contenders:
            if contender == "lakegate":
                entry = run["lakegate"]
            else:
                entry = run["valentine"][contender.split(":", 1)[1]]
            if "error" in entry:
                errors[f"{pair.name}/{contender}"] = entry["error"]
                continue
            c = counts(entry["predictions"], entry["scores"], truth)
            for key in pooled[contender]:
                pooled[contender][key] += c[key]
            rows.append((pair.name, contender, metrics(c), c))
        shuffled = args.workdir / pair.name / "source_shuffled.csv"
        checks = transform_checks(pair, shuffled, run["lakegate"], truth_doc["matches"])
        if checks is None:
            transforms_available = False
        else:
            transform_results.extend({"pair": pair.name, **c} for c in checks)

    print(f"\n{'pair':42s} {'contender':34s} {'P':>5s} {'R':>5s} {'F1':>5s} {'R@GT':>5s}  tp/fp/fn")
    for name, contender, m, c in rows:
        print(
            f"{name[:42]:42s} {contender:34s} {m['precision']:5.2f} {m['recall']:5.2f} {m['f1']:5.2f}"
            f" {m['recall_at_gt']:5.2f}  {c['tp']}/{c['fp']}/{c['fn']}"
        )
    print()
    overall = {c: metrics(pooled[c]) for c in contenders}
    for contender in contenders:
        m = overall[contender]
        print(
            f"{'OVERALL (pooled)':42s} {contender:34s} {m['precision']:5.2f} {m['recall']:5.2f} {m['f1']:5.2f}"
            f" {m['recall_at_gt']:5.2f}"
        )
    for check in transform_results:
        print(
            f"transform {check['pair'][:30]:30s} {check['source']}->{check['target']}: predicted={check['predicted']}"
            f" share={check['share']:.2f} reproduced={check['reproduced']}"
            + (f" ({check['error']})" if "error" in check else "")
        )
    for key, error in errors.items():
        print(f"error {key}: {error}")
    valentine_f1 = {c.split(":", 1)[1]: overall[c]["f1"] for c in contenders if c.startswith("valentine:")}
    best = max(valentine_f1, key=lambda k: valentine_f1[k]) if valentine_f1 else None
    transform_accuracy = None
    if transforms_available and transform_results:
        transform_accuracy = round(sum(c["reproduced"] for c in transform_results) / len(transform_results), 4)
    elif not transforms_available:
        print("TODO: transform accuracy needs lakegate.schema.dsl (Program) and synthesis; reported as null")
    summary = {
        "f1": round(overall["lakegate"]["f1"], 4),
        "recall_at_gt": round(overall["lakegate"]["recall_at_gt"], 4),
        "precision": round(overall["lakegate"]["precision"], 4),
        "recall": round(overall["lakegate"]["recall"], 4),
        "best_valentine_matcher": best,
        "best_valentine_f1": None if best is None else round(valentine_f1[best], 4),
        "valentine_f1": {k: round(v, 4) for k, v in valentine_f1.items()},
        "transform_accuracy": transform_accuracy,
        "n_transforms": len(transform_results),
        "n_matches": pooled["lakegate"]["gt"],
        "n_pairs": len(pairs),
        "seed": args.seed,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
