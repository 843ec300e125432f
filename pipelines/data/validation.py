"""Great Expectations 1.x validation of sessions and features, with row-level failure reasons.

The suites live as JSON in `expectations/` (`raw_sessions.json` on the parsed
sessions, `features.json` on the model input). They run in an ephemeral GX
context (in memory, analytics and progress bars off), so nothing is written
outside the project. Each failing row gets the reasons of every expectation it
broke; `quarantine_failed_rows` writes them to `<data_dir>/quarantine/`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
SUITES = ("raw_sessions", "features")
_lock = threading.Lock()  # one GX context per process; its stores are not thread-safe


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result on a batch."""

    suite: str
    expectation: str
    column: str | None
    reason: str
    failed_rows: int

    @property
    def label(self) -> str:
        return f"{self.suite}.{self.expectation}({self.column or 'table'})"


@dataclass
class ValidationReport:
    """Row-level outcome of both suites on one batch."""

    rows: int
    max_failure_rate: float
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    failures: dict[Any, list[str]] = field(default_factory=dict)  # row index -> reasons

    @property
    def failed_rows(self) -> int:
        return len(self.failures)

    @property
    def failure_rate(self) -> float:
        return self.failed_rows / self.rows if self.rows else 0.0

    @property
    def passed(self) -> bool:
        return self.failure_rate <= self.max_failure_rate

    def summary(self) -> dict:
        """JSON-safe summary for manifests and reports."""
        return {
            "rows": self.rows, "failed_rows": self.failed_rows,
            "failure_rate": round(self.failure_rate, 6),
            "max_failure_rate": self.max_failure_rate, "passed": self.passed,
            "expectations": [{"suite": o.suite, "expectation": o.expectation, "column": o.column,
                              "reason": o.reason, "failed_rows": o.failed_rows}
                             for o in self.outcomes],
        }

    def markdown(self) -> str:
        """The validation table (Prefect artifact, CLI)."""
        verdict = "passed" if self.passed else "FAILED"
        headline = (f"**Validation {verdict}**: {self.failed_rows} of {self.rows} rows failed "
                    f"({self.failure_rate:.2%}; threshold {self.max_failure_rate:.2%})")
        lines = [headline, "",
                 "| suite | expectation | column | failed rows | rule |", "|---|---|---|---:|---|"]
        failing = sorted((o for o in self.outcomes if o.failed_rows),
                         key=lambda o: (-o.failed_rows, o.suite))
        for o in failing:
            lines.append(f"| {o.suite} | {o.expectation} | {o.column or ''} | {o.failed_rows} "
                         f"| {o.reason} |")
        passing = len(self.outcomes) - len(failing)
        lines.append(f"| all suites | {passing} other expectations | | 0 | passed on every row |")
        return "\n".join(lines)


def load_suite(name: str, directory: Path = EXPECTATIONS_DIR) -> dict:
    """The suite's JSON document (`{"name", "expectations": [{"type", "kwargs", "meta"}]}`)."""
    return json.loads((directory / f"{name}.json").read_text())


@cache
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    asset = context.data_sources.add_pandas("evguard").add_dataframe_asset("batch")
    return context, asset.add_batch_definition_whole_dataframe("whole")


def _suite(document: dict):
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    return gx.ExpectationSuite(
        name=document["name"],
        expectations=[ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"],
                                               meta=e.get("meta")).to_domain_obj()
                      for e in document["expectations"]])


INPUT_KINDS = "userInputs_kind"


def input_kinds(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `userInputs` replaced by `INPUT_KINDS`, the name of each cell's type (or
    null): all the suites check of it, so a frame of many sessions need not hold every edit
    (pure)."""
    if "userInputs" not in frame.columns:
        return frame
    kinds = [None if v is None else type(v).__name__ for v in frame["userInputs"]]
    return frame.drop(columns="userInputs").assign(
        **{INPUT_KINDS: pd.Series(kinds, index=frame.index, dtype=object)})


def _gx_safe(frame: pd.DataFrame) -> pd.DataFrame:
    # GX cannot hash list cells: validate the *type* of userInputs (a list, or null)
    reduced = input_kinds(frame)
    if INPUT_KINDS not in reduced.columns:
        return frame
    kinds = reduced[INPUT_KINDS].astype(object)
    return reduced.drop(columns=INPUT_KINDS).assign(
        userInputs=kinds.where(kinds.notna(), None))


def run_suite(frame: pd.DataFrame, document: dict) -> tuple[list[ExpectationOutcome],
                                                            dict[Any, list[str]]]:
    """Validate `frame` with one suite document.

    Args:
        frame: rows to check (its index identifies the rows in the result).
        document: a suite from `load_suite`.

    Returns:
        `(outcomes, failures)`: one outcome per expectation and `row index -> reasons`.
        A table-level failure (e.g. a missing column) fails every row.
    """
    outcomes: list[ExpectationOutcome] = []
    failures: dict[Any, list[str]] = {}
    with _lock:
        _, batch_definition = _context()
        batch = batch_definition.get_batch(batch_parameters={"dataframe": _gx_safe(frame)})
        result = batch.validate(_suite(document), result_format={"result_format": "COMPLETE"})
        # the cached context would keep these rows alive (all of them) until the next batch
        batches = batch.data.execution_engine.batch_manager
        batches.batch_data_cache.clear()
        batches.reset_batch_cache()
        del batch
    for item in result.results:
        config = item.expectation_config
        column = config.kwargs.get("column") or config.kwargs.get("column_A")
        reason = (config.meta or {}).get("reason", config.type)
        if item.exception_info and item.exception_info.get("raised_exception"):
            rows = list(frame.index)  # the expectation could not even run: nothing passes
            reason = f"{reason} (error: {item.exception_info.get('exception_message')})"
        elif item.success:
            rows = []
        else:
            rows = item.result.get("unexpected_index_list")
            rows = list(frame.index) if rows is None else rows  # table-level expectation
        outcome = ExpectationOutcome(document["name"], config.type, column, reason, len(rows))
        outcomes.append(outcome)
        for row in rows:
            failures.setdefault(row, []).append(f"{outcome.label}: {reason}")
    return outcomes, failures


def validate_batch(frame: pd.DataFrame, max_failure_rate: float,
                   directory: Path = EXPECTATIONS_DIR) -> ValidationReport:
    """Run the raw-session suite and the feature suite on a featurised frame.

    Args:
        frame: `add_features(sessions_to_frame(records))`, index = record position, or its
            `input_kinds` (the same outcome).
        max_failure_rate: the batch fails when more rows than this fraction fail.
        directory: where the suite JSON files are.

    Returns:
        A `ValidationReport` with row-level reasons.
    """
    report = ValidationReport(rows=len(frame), max_failure_rate=max_failure_rate)
    if frame.empty:
        return report
    for name in SUITES:
        outcomes, failures = run_suite(frame, load_suite(name, directory))
        report.outcomes.extend(outcomes)
        for row, reasons in failures.items():
            report.failures.setdefault(row, []).extend(reasons)
    return report


def record_key(record: dict) -> str:
    """Content key of a session: a re-run skips rows quarantined before, unless they changed."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def quarantined_keys(quarantine_dir: Path) -> set[str]:
    """Keys of every record already in the quarantine."""
    keys: set[str] = set()
    for path in sorted(quarantine_dir.glob("*.jsonl")) if quarantine_dir.exists() else []:
        with path.open() as handle:
            keys.update(json.loads(line).get("key", "") for line in handle if line.strip())
    return keys


def quarantine_failed_rows(records: Sequence[dict] | Mapping[Any, dict], report: ValidationReport,
                           quarantine_dir: Path, run_id: str) -> Path | None:
    """Write each failing record with its reasons to `<quarantine_dir>/<run_id>.jsonl`.

    Args:
        records: the batch (or at least its failing rows), keyed like the validated frame's
            index.
        report: its validation report.
        quarantine_dir: `<data_dir>/quarantine`.
        run_id: names the file.

    Returns:
        The file written, or None when no row failed.
    """
    if not report.failures:
        return None
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    path = quarantine_dir / f"{run_id}.jsonl"
    with path.open("w") as handle:
        for row in sorted(report.failures):
            handle.write(json.dumps({"run_id": run_id, "row": int(row),
                                     "key": record_key(records[row]),
                                     "sessionID": records[row].get("sessionID"),
                                     "failed": report.failures[row], "record": records[row]},
                                    default=str) + "\n")
    return path
