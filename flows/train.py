"""The training deployment: dataset -> tune -> MLflow -> register -> champion/challenger.

Each step is a `pipelines.models.training` function wrapped as a task. Two artifacts
are published: the candidate comparison table (key `train-candidates`) and the
promotion decision with its reason (key `train-promotion`). Started weekly by
`train-weekly`, by `evguard train`, by the monitoring flow on drift
(parameter `reason`) and by `evguard demo`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.models import training
from pipelines.models.train_params import TrainParams
from pipelines.settings import load_settings

resolve = task(training.resolve_dataset, name="resolve-dataset", cache_policy=NO_CACHE)
prepare = task(training.prepare_data, name="split-and-label", cache_policy=NO_CACHE)
tune = task(training.tune_candidates, name="tune-candidates", cache_policy=NO_CACHE)
build = task(training.build_model, name="refit-chosen-candidate", cache_policy=NO_CACHE)
register = task(training.log_and_register, name="log-to-mlflow-and-register",
                cache_policy=NO_CACHE)
promote = task(training.promote, name="champion-or-challenger", cache_policy=NO_CACHE)

TABLE_COLUMNS = ("candidate", "pr_auc", "pr_auc_se", "roc_auc", "precision_at_k",
                 "recall_at_budget", "probe_recall", "em", "mv", "threshold", "fit_seconds",
                 "score_rows_per_s", "selected")


def _cell(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value


@flow(name="train_flow",
      description="Tune IF, EIF and isotree forests, log to MLflow, promote a better champion")
def train_flow(params: TrainParams = TrainParams(), reason: str | None = None) -> dict:  # noqa: B008
    """Train once; returns the `TrainingReport` as a dict.

    Args:
        params: grid, alert budget, margin, seed (a form in the Prefect UI).
        reason: why the run started (the drift trigger passes it); overrides `params.reason`.
    """
    import time

    started = time.perf_counter()
    if reason:
        params = params.model_copy(update={"reason": reason})
    settings = load_settings()
    logger = get_run_logger()
    dataset = resolve(settings, params.dataset_id)
    logger.info("training on dataset %s (reason: %s)", dataset.dataset_id, params.reason)
    data = prepare(dataset, params)
    tuning = tune(data, params)
    model = build(data, tuning, params)
    logged, version = register(settings, data, tuning, model, params)
    decision = promote(settings, version, model, data, tuning, params)
    report = training.make_report(data, tuning, logged, version, decision, started)
    create_table_artifact(
        [{k: _cell(row.get(k)) for k in TABLE_COLUMNS} for row in report.candidates],
        key="train-candidates",
        description=f"Candidates on dataset {report.dataset_id}, criterion {report.criterion}")
    create_markdown_artifact(
        f"### {settings.model_name} v{report.version}: **{report.decision}**\n\n"
        f"{report.reason}\n\n| | |\n|---|---|\n| chosen | `{report.chosen}` |\n"
        f"| criterion | {report.criterion} |\n| dataset | {report.dataset_id} |\n"
        f"| MLflow run | {report.parent_run_id} |\n| reason | {params.reason} |\n",
        key="train-promotion", description="Champion/challenger decision")
    logger.info("%s v%s %s: %s", settings.model_name, report.version, report.decision,
                report.reason)
    return report.__dict__


if __name__ == "__main__":
    train_flow()
