"""`evguard train` and `evguard models show`: tune, register, promote; inspect the registry.

The project's model code is imported inside the commands: it loads MLflow and
scikit-learn, which would make `evguard --help` take seconds.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from evguard.commands.common import clear_errors, console, progress_bar, settings, stage_updates

app = typer.Typer(help="The registered anomaly model: champion, challenger, versions.",
                  no_args_is_help=True)

KEY_METRICS = ("pr_auc", "precision_at_k", "recall_at_budget", "probe_recall", "em", "mv")
HEADERS = {"pr_auc": "PR-AUC", "precision_at_k": "P@k", "recall_at_budget": "R@budget",
           "probe_recall": "probes", "em": "EM", "mv": "MV"}


def _csv_ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _csv_floats(value: str) -> list[float]:
    return [float(v) for v in value.split(",") if v.strip()]


def train(
    dataset: Annotated[str | None, typer.Option(
        help="Dataset id (default: newest that passed validation)")] = None,
    kinds: Annotated[str, typer.Option(help="Detector families: iforest,eif,isotree")]
    = "iforest,eif,isotree",
    n_estimators: Annotated[str, typer.Option(help="Grid of trees per forest")] = "100,200",
    max_samples: Annotated[str, typer.Option(help="Grid of rows per tree")] = "256,512",
    max_features: Annotated[str, typer.Option(help="Grid of IF feature shares")] = "0.5,1.0",
    extension_levels: Annotated[str, typer.Option(
        help="Grid of extension levels (eif, isotree); >= features - 1 = fully extended")]
    = "1,3,64",
    alert_budget: Annotated[float, typer.Option(min=0.0001, max=0.5,
                                                help="Share of sessions that may alert")] = 0.01,
    margin: Annotated[float, typer.Option(min=0, max=1, help="Relative improvement over "
                                          "the champion required for promotion")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of everything random")] = 42,
    jobs: Annotated[int, typer.Option(min=1, help="Parallel candidate evaluations")] = 2,
    figures: Annotated[bool, typer.Option(help="Log PNG figures to MLflow")] = True,
    deployment: Annotated[bool, typer.Option(
        help="Start the train-weekly deployment on the Prefect server instead of "
             "training in this process")] = False,
) -> None:
    """Tune IF/EIF/isotree, log candidates to MLflow, register the best, promote if better."""
    from pydantic import ValidationError

    from pipelines.models.selection import NoEligibleCandidate
    from pipelines.models.train_params import TrainParams
    from pipelines.models.training import run_training
    from pipelines.models.training_data import TrainingDataError

    s = settings()
    with clear_errors(ValidationError, ValueError):
        params = TrainParams(
            dataset_id=dataset, kinds=[k.strip() for k in kinds.split(",") if k.strip()],
            n_estimators=_csv_ints(n_estimators), max_samples=_csv_ints(max_samples),
            max_features=_csv_floats(max_features), extension_levels=_csv_ints(extension_levels),
            alert_budget=alert_budget, promotion_margin=margin, seed=seed, n_jobs=jobs,
            log_figures=figures, reason="cli")
    if deployment:
        _start_deployment(s, params)
        return
    bar = progress_bar(44)
    with clear_errors(TrainingDataError, NoEligibleCandidate), bar:
        task = bar.add_task("starting", total=1)
        report = run_training(s, None, params, progress=stage_updates(bar, task, 44))
    table = Table(title=f"candidates on {report.dataset_id} (criterion {report.criterion})",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("candidate", no_wrap=True)
    for metric in KEY_METRICS:
        table.add_column(HEADERS[metric], justify="right")
    for row in report.candidates:
        name = f"[bold green]{row['candidate']} *[/]" if row["selected"] else row["candidate"]
        table.add_row(name, *[_fmt(row.get(m)) for m in KEY_METRICS])
    console.print(table)
    color = {"promoted": "green", "challenger": "yellow"}.get(report.decision, "red")
    console.print(f"{s.model_name} v{report.version}: [{color}]{report.decision}[/] - "
                  f"{report.reason}\nMLflow run {report.parent_run_id} "
                  f"(experiment {report.experiment_id}), {report.total_seconds:.0f}s")


def _start_deployment(s, params) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with clear_errors(Exception), temporary_settings({PREFECT_API_URL: s.prefect_api}):
        run = run_deployment(name="train_flow/train-weekly",
                             parameters={"params": params.model_dump()}, timeout=0)
    console.print(f"started flow run {run.name} ({run.id}) of train_flow/train-weekly; "
                  f"follow it at {s.prefect_api.removesuffix('/api')}/runs/flow-run/{run.id}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


@app.command()
def show(
    versions: Annotated[int, typer.Option(min=0, help="Also list this many latest versions")] = 5,
) -> None:
    """Show the champion, challenger and previous versions with their metrics and decisions."""
    from mlflow.exceptions import MlflowException

    from pipelines.models.registry import (
        CHALLENGER,
        CHAMPION,
        PREVIOUS,
        RegistryUnavailable,
        find_version,
        mlflow_client,
    )

    s = settings()
    client = mlflow_client(s)
    with clear_errors(MlflowException, RegistryUnavailable):
        found = client.search_model_versions(f"name = '{s.model_name}'")
        by_alias = {alias: find_version(client, s.model_name, alias)
                    for alias in (CHAMPION, CHALLENGER, PREVIOUS)}
    if not found:
        console.print(f"no versions of {s.model_name!r} in {s.mlflow_uri}; run `evguard train`")
        raise typer.Exit(1)
    aliased = {str(v.version): a for a, v in by_alias.items() if v is not None}
    latest = sorted(found, key=lambda v: int(v.version), reverse=True)[:versions]
    rows = [v for v in by_alias.values() if v is not None]
    rows += [v for v in latest if str(v.version) not in aliased]
    console.print(f"[bold]{s.model_name}[/] in {s.mlflow_uri}", highlight=False)
    for version in rows:
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        tags = version.tags
        alias = aliased.get(str(version.version), "")
        color = {"champion": "green", "challenger": "yellow"}.get(alias, "white")
        console.print(f"\n[bold {color}]{alias or 'version':<10}[/] v{version.version}  "
                      f"{tags.get('candidate', '?')}  threshold "
                      f"{_fmt(_float(tags.get('threshold')))}  features "
                      f"{tags.get('feature_version', '?')}  dataset {tags.get('dataset_id', '?')}",
                      highlight=False)
        console.print("           " + "  ".join(f"{HEADERS[m]} {_fmt(metrics.get(m))}"
                                                for m in KEY_METRICS), highlight=False)
        console.print(f"           {tags.get('decision', 'undecided')}: "
                      f"{tags.get('decision_reason', 'no decision recorded')}", highlight=False)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def register(root: typer.Typer) -> None:
    root.command(name="train")(train)
    root.add_typer(app, name="models")
