"""`evguard evaluate`: plant labelled faults in real ACN exports and measure the whole pipeline.

The evaluation code is imported inside the command: it loads MLflow, scikit-learn
and the serving steps, which would make `evguard --help` take seconds.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from evguard.commands.common import (
    clear_errors,
    console,
    err_console,
    progress_bar,
    settings,
    stage_updates,
)

# the columns of `evaluation.report.TYPE_HEADERS`, narrow enough for 80 columns
SHORT_TYPE_HEADERS = ("n", "valid.", "rules", "alert", "any", "seed", "SHAP")


def _csv(value: str | None, kind: type) -> list | None:
    return None if value is None else [kind(v.strip()) for v in value.split(",") if v.strip()]


def _train_overrides(jobs: int, **grid: str | None) -> dict:
    """The grid options given on the command line; the others keep `evguard train`'s defaults."""
    kinds = {"kinds": str, "n_estimators": int, "max_samples": int, "max_features": float,
             "extension_levels": int}
    given = {name: _csv(value, kinds[name]) for name, value in grid.items() if value is not None}
    return {**given, "n_jobs": jobs}


def _command(inputs: list[Path], options: dict, train) -> str:
    """The command line that reproduces a run, with the grid spelled out."""
    grid = {name: ",".join(map(str, getattr(train, name))) for name in
            ("kinds", "n_estimators", "max_samples", "max_features", "extension_levels")}
    parts = ["evguard evaluate --acn", *map(str, inputs)]
    for name, value in {**options, **grid, "jobs": train.n_jobs}.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def _tables(report: dict) -> list[Table]:
    from evaluation.report import summary_rows, type_rows

    tables = []
    for scenario in report["scenarios"].values():
        metrics, model = scenario["metrics"], scenario["model"]
        summary = Table(title=f"{scenario['title']}: {metrics['sessions']:,} sessions scored, "
                        f"{metrics['injected']} injected; model {model['candidate']} "
                        f"v{model['version']} ({model['decision']})",
                        title_justify="left", box=box.SIMPLE_HEAD)
        for header, justify in (("measure", "left"), ("evguard", "right"),
                                ("seed baseline", "right")):
            summary.add_column(header, justify=justify)
        for row in summary_rows(metrics):
            summary.add_row(*row)
        per_type = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left",
                         caption="valid.: quarantined by the ingest suites; rules: broke a "
                         "features-suite range in the stream; alert: published as an anomaly; "
                         "any: one of those or dead-lettered; seed: the seed baseline's alert; "
                         "SHAP: top feature matches the fault")
        per_type.add_column("anomaly type", no_wrap=True)
        for header in SHORT_TYPE_HEADERS:
            per_type.add_column(header, justify="right")
        for row in type_rows(metrics):
            per_type.add_row(*row)
        tables += [summary, per_type]
    return tables


def _station_table(report: dict) -> Table:
    """Per fault kind: planted, detected, delays; false station alerts per 100 station-weeks."""
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    mean, seeds = report["mean"], ",".join(map(str, report["seeds"]))
    table = Table(title=f"Station faults (mean of seeds {seeds}): "
                  f"{fmt(mean['false_per_100_station_weeks'], '.2f')} false station alerts per "
                  f"100 station-weeks ({mean['station_weeks']:.0f} untouched)",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("fault", "planted", "detected", "delay h", "delay sessions", "target"):
        table.add_column(header, justify="left" if header == "fault" else "right")
    kinds = mean["kinds"]
    outage, degraded = kinds["outage"], kinds["degraded"]
    table.add_row("outage", fmt(outage["planted"], ".0f"), fmt(outage["detected"], ".0%"),
                  fmt(outage["median_delay_h"], ".0f"), "-", "")
    table.add_row("  >= 5 d, >= 1/weekday", fmt(outage["target_planted"], ".0f"),
                  fmt(outage["target_detected"], ".0%"), fmt(outage["target_median_delay_h"], ".0f"),
                  "-", ">= 90%")
    table.add_row("  oracle rate, same count", "", fmt(outage["target_oracle_detected"], ".0%"),
                  fmt(outage["target_oracle_median_delay_h"], ".0f"), "-", "")
    table.add_row("degraded", fmt(degraded["planted"], ".0f"), fmt(degraded["detected"], ".0%"),
                  fmt(degraded["median_delay_h"], ".0f"),
                  fmt(degraded["median_delay_sessions"], ".1f"), "")
    table.add_row("  within 10 sessions", "", fmt(degraded["within_10_sessions"], ".0%"), "", "",
                  ">= 80%")
    failing = kinds["failing"]
    table.add_row("failing", fmt(failing["planted"], ".0f"), fmt(failing["detected"], ".0%"),
                  fmt(failing["median_delay_h"], ".0f"),
                  fmt(failing["median_delay_sessions"], ".1f"), "")
    table.caption = ("delays are medians of the detected; false alerts: target <= 1 per 100 "
                     "station-weeks; silent/failing/degraded: " + "/".join(
                         fmt(v, ".1f") for v in mean["false_alerts"].values()))
    table.caption_justify = "left"
    return table


def _station_faults(records: list[dict], seeds: list[int], policy_text: str | None) -> dict:
    from evaluation.station_faults import evaluate_station_faults

    policy = _station_policy(policy_text)
    console.print(f"station faults: planting and replaying with seeds {seeds}", highlight=False)
    report = evaluate_station_faults(records, seeds, policy)
    console.print(_station_table(report))
    return report


def _live_table(report: dict) -> Table:
    """Per live fault kind, pooled over seeds: planted, recall, charger-time delay."""
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    pooled, seeds = report["pooled"], ",".join(str(r["seed"]) for r in report["seeds"])
    table = Table(title=f"Live faults (seeds {seeds}): {pooled['false_total']} false live "
                  f"alerts in {pooled['clean_charger_hours']:,.0f} charger-hours = "
                  f"{fmt(pooled['false_per_1000_charger_hours'], '.2f')} per 1,000 "
                  f"(target <= 1)", title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("fault", "planted", "detected", "recall", "median delay s",
                   "max delay s"):
        table.add_column(header, justify="left" if header == "fault" else "right")
    for kind, row in pooled["kinds"].items():
        table.add_row(kind, str(row["planted"]), str(row["detected"]),
                      fmt(row["recall"], ".3f"), fmt(row["median_s"], ".1f"),
                      fmt(row["worst_max_s"], ".0f"))
    excluded = fmt(pooled["false_per_1000_charger_hours_excluding_in_record"], ".2f")
    table.caption = (f"target: recall >= 0.95 per kind; delay: charger time from the first telltale sample to the alert, "
                     f"median of the per-seed medians; of the false alerts "
                     f"{pooled['false_in_record']} are never_unplugged on sessions whose real "
                     f"car stayed that long: {excluded} "
                     f"per 1,000 without them")
    table.caption_justify = "left"
    return table


def _policy(text: str | None, default, option: str):
    """`name=value,...` -> `default` (a frozen dataclass of thresholds) with those changed."""
    from dataclasses import fields, replace

    if not text:
        return default
    types = {f.name: type(getattr(default, f.name)) for f in fields(default)}
    changes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name.strip() not in types or not value:
            raise ValueError(f"{option}: {item!r} is not name=value with a name of "
                             f"{sorted(types)}")
        changes[name.strip()] = types[name.strip()](value)
    return replace(default, **changes)


def _live_policy(text: str | None):
    """`samples=1,max_temperature_c=70` -> a `LivePolicy` with those thresholds changed."""
    from pipelines.telemetry.detectors import DEFAULT_POLICY

    return _policy(text, DEFAULT_POLICY, "--live-policy")


def _station_policy(text: str | None):
    """`cusum_h=5` -> a `HealthPolicy` with those thresholds changed."""
    from pipelines.stations.health import DEFAULT_POLICY

    return _policy(text, DEFAULT_POLICY, "--station-policy")


def _live_faults(records: list[dict], seeds: list[int], sessions: int, interval: float,
                 fault_rate: float, policy_text: str | None) -> dict:
    from evaluation.live_faults import LiveEvalConfig, evaluate_live_faults

    config = LiveEvalConfig(sessions=sessions, sample_interval_s=interval,
                            fault_rate=fault_rate, policy=_live_policy(policy_text))
    console.print(f"live faults: {sessions} sessions per seed, seeds {seeds}, meter values "
                  f"every {interval:g} s, {fault_rate:.0%} faulted", highlight=False)
    bar = progress_bar(48)
    with bar:
        task = bar.add_task("replaying", total=None)

        def progress(seed: int, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"seed {seed}")
        report = evaluate_live_faults(records, seeds, config, progress)
    console.print(_live_table(report))
    return report


def evaluate(
    acn: Annotated[list[Path] | None, typer.Option(
        "--acn", help="ACN export file or directory of them (repeatable)")] = None,
    paths: Annotated[list[Path] | None, typer.Argument(
        help="More export files, so that `--acn dir/*.json` works", show_default=False)] = None,
    rate: Annotated[float, typer.Option(min=0.001, max=0.49,
                                        help="Share of sessions turned into labelled faults")]
    = 0.03,
    seed: Annotated[int, typer.Option(help="Seed of injection, training and baseline")] = 1,
    train_site: Annotated[str, typer.Option(help="Cross-site: the site that trains")] = "caltech",
    score_site: Annotated[str, typer.Option(help="Cross-site: the site that is scored")] = "jpl",
    cross_site: Annotated[bool, typer.Option(help="Also run the cross-site scenario")] = True,
    eval_fraction: Annotated[float, typer.Option(
        min=0.05, max=0.9, help="Time split: latest share of sessions scored")] = 0.3,
    alert_budget: Annotated[float, typer.Option(
        min=0.0001, max=0.5, help="Share of sessions that may alert")] = 0.01,
    kinds: Annotated[str | None, typer.Option(
        help="Detector families, e.g. iforest,eif [default: as evguard train]")] = None,
    n_estimators: Annotated[str | None, typer.Option(
        help="Grid of trees per forest [default: as evguard train]")] = None,
    max_samples: Annotated[str | None, typer.Option(
        help="Grid of rows per tree [default: as evguard train]")] = None,
    max_features: Annotated[str | None, typer.Option(
        help="Grid of IF feature shares [default: as evguard train]")] = None,
    extension_levels: Annotated[str | None, typer.Option(
        help="Grid of extension levels [default: as evguard train]")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Parallel candidate evaluations")] = 2,
    out: Annotated[Path, typer.Option(help="JSON report; the PR-curve PNG goes next to it")]
    = Path("evaluation.json"),
    workdir: Annotated[Path | None, typer.Option(
        help="Private data dir and MLflow store (default <state dir>/evaluation/<time>)")] = None,
    station_faults: Annotated[bool, typer.Option(
        help="Also plant station faults and measure station health")] = True,
    station_faults_only: Annotated[bool, typer.Option(
        "--station-faults-only", help="Only the station-fault evaluation (seconds, no MLflow)")]
    = False,
    station_seeds: Annotated[str, typer.Option(
        help="Seeds of the station-fault planting, averaged")] = "1,2,3",
    station_policy: Annotated[str | None, typer.Option(
        help="Station faults: health thresholds changed, e.g. cusum_h=5,z_clip=2.5 "
        "(names of pipelines.stations.health.HealthPolicy)")] = None,
    live_faults: Annotated[bool, typer.Option(
        "--live-faults", help="Only the live-fault evaluation: planted OCPP faults through "
        "the gateway's normaliser and the live detectors, in event time (minutes, no MLflow)")]
    = False,
    live_seeds: Annotated[str, typer.Option(help="Seeds of the live-fault fleets")] = "1,2,3",
    live_sessions: Annotated[int, typer.Option(
        min=1, help="Sessions sampled per live-fault seed")] = 400,
    live_interval: Annotated[float, typer.Option(
        min=1.0, help="Live faults: seconds between meter values")] = 10.0,
    live_fault_rate: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Live faults: share of sessions given a fault")] = 0.5,
    live_policy: Annotated[str | None, typer.Option(
        help="Live faults: detector thresholds changed, e.g. samples=1,max_temperature_c=70 "
        "(names of pipelines.telemetry.detectors.LivePolicy)")] = None,
) -> None:
    """Evaluate evguard on real ACN exports with injected faults, next to the seed baseline.

    Injects the generator's labelled anomaly types at --rate, then per scenario
    (time split; cross-site) ingests with validation, trains, registers and
    promotes in a private MLflow store, and scores the held-out sessions through
    the worker's decode and score steps. Station faults are planted separately
    (--station-faults) and replayed through the station health detectors.
    """
    from pydantic import ValidationError

    from evaluation.report import pr_curves_png
    from evaluation.scenarios import EvaluationConfig, EvaluationError, run_evaluation
    from pipelines.data.exports import ExportFormatError, load_exports
    from pipelines.models.train_params import TrainParams

    inputs = [*(acn or []), *(paths or [])]
    if not inputs:
        err_console.print("[bold red]error:[/] give ACN export files: --acn PATH "
                          "(e.g. --acn ../shared/acn/*.json)")
        raise typer.Exit(2)
    s = settings()
    with clear_errors(ExportFormatError, FileNotFoundError, ValueError, ValidationError):
        records = load_exports(inputs)
        config = EvaluationConfig(
            rate=rate, seed=seed, eval_fraction=eval_fraction, alert_budget=alert_budget,
            train_site=train_site if cross_site else None,
            score_site=score_site if cross_site else None,
            train=_train_overrides(jobs, kinds=kinds, n_estimators=n_estimators,
                                   max_samples=max_samples, max_features=max_features,
                                   extension_levels=extension_levels))
        train = TrainParams(**config.train)
    if live_faults:
        with clear_errors(ValueError):
            live_report = _live_faults(records, _csv(live_seeds, int) or [1], live_sessions,
                                       live_interval, live_fault_rate, live_policy)
        command = (f"evguard evaluate --live-faults --acn {' '.join(map(str, inputs))} "
                   f"--live-seeds {live_seeds} --live-sessions {live_sessions} "
                   f"--live-interval {live_interval:g} --live-fault-rate {live_fault_rate:g} "
                   + (f"--live-policy {live_policy} " if live_policy else "") + f"--out {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"command": command, "inputs": [str(p) for p in inputs],
                                   "live_faults": live_report}, indent=2, default=str))
        console.print(f"report: {out}")
        return
    if station_faults or station_faults_only:
        with clear_errors(ValueError):
            station_report = _station_faults(records, _csv(station_seeds, int) or [1],
                                             station_policy)
        if station_faults_only:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"inputs": [str(p) for p in inputs],
                                       "station_faults": station_report}, indent=2, default=str))
            console.print(f"report: {out}")
            return
    workdir = workdir or s.state_path / "evaluation" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    console.print(f"{len(records):,} sessions from {len(inputs)} path(s); injecting "
                  f"{rate:.1%} faults (seed {seed}); work dir {workdir}", highlight=False)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    bar = progress_bar(48)
    with clear_errors(EvaluationError), bar:
        stages = bar.add_task("starting", total=6)
        candidates = bar.add_task("  training", total=1)
        result = run_evaluation(s, records, config, workdir, stage_updates(bar, stages, 48),
                                training_progress=stage_updates(bar, candidates, 48, indent="  "))
    command = _command(inputs, {"rate": rate, "seed": seed, "cross_site": cross_site,
                                "train_site": train_site, "score_site": score_site,
                                "eval_fraction": eval_fraction, "alert_budget": alert_budget},
                       train)
    command += f" --out {out}"
    report = {"command": command, "inputs": [str(p) for p in inputs], **result.report}
    if station_faults:
        report["station_faults"] = station_report
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    for table in _tables(report):
        console.print(table)
    if result.curves:
        figure = out.with_name(out.stem + "_pr_curves.png")
        figure.write_bytes(pr_curves_png(result.curves))
        console.print(f"PR curves: {figure}")
    console.print(f"report: {out} ({report['seconds']:.0f}s)")
    for reason in report["skipped"].values():
        console.print(f"[yellow]cross-site skipped:[/] {reason}", highlight=False)
    for reason in report["failed"].values():
        err_console.print(f"[bold red]scenario failed:[/] {reason}", highlight=False)
    if report["failed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(name="evaluate")(evaluate)
