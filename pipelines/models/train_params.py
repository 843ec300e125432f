"""The parameters of a training run: a pydantic model, so the Prefect UI shows them as a form
and validates them before a run starts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipelines.models.candidates import SearchSpace
from pipelines.models.sampling import SamplePlan
from pipelines.models.tuning import TuningConfig

# measured on the real exports (docs/benchmarks.md, "Training against contaminated history")
TRIM_DEFAULT = 0.015


class TrainParams(BaseModel):
    """Parameters of a training run (the Prefect UI shows them as a form)."""

    reason: str = Field("manual", description="Why this run was started (schedule, drift, "
                        "demo, manual); recorded as an MLflow tag")
    dataset_id: str | None = Field(None, description="Dataset to train on; empty = the newest "
                                   "one that passed validation")
    kinds: list[Literal["iforest", "eif", "isotree"]] = Field(
        ["iforest", "eif", "isotree"], description="Detector families to tune")
    n_estimators: list[int] = Field([100, 200], description="Trees per forest (grid)")
    max_samples: list[int] = Field([256, 512], description="Rows drawn per tree (grid)")
    max_features: list[float] = Field([0.5, 1.0],
                                      description="Isolation Forest: share of features per tree")
    extension_levels: list[int] = Field([1, 3, 64], description="Extension levels of eif and "
                                        "isotree (grid); values >= n_features - 1 mean fully "
                                        "extended")
    alert_budget: float = Field(0.01, gt=0, lt=0.5, description="Share of sessions that may "
                                "alert; sets the stored threshold")
    trim: float = Field(TRIM_DEFAULT, ge=0, lt=0.5, description="Share of the top-scored "
                        "training sessions each forest is refitted without (faults that pass "
                        "validation stay in the history and mask their kind); 0 = one fit")
    eval_fraction: float = Field(0.3, gt=0.05, lt=0.9, description="Latest share of sessions "
                                 "held out for evaluation")
    inject_rate: float = Field(0.03, ge=0, le=0.5, description="Without dataset labels: share "
                               "of held-out sessions turned into labelled anomalies (0 = none)")
    probes: int = Field(200, ge=0, description="Held-out sessions rewritten to impossible "
                        "power that a model must flag (0 = no probe gate)")
    min_probe_recall: float = Field(0.9, ge=0, le=1, description="Share of probes a model "
                                    "must flag to be chosen or promoted")
    promotion_margin: float = Field(0.01, ge=0, le=1, description="Relative improvement over "
                                    "the champion required for promotion")
    tolerance: float = Field(0.005, ge=0, description="PR-AUC differences below this are ties; "
                             "ties go to the cheaper candidate")
    seed: int = Field(42, description="Seed of split, detectors, injection and Monte Carlo")
    n_jobs: int = Field(2, ge=1, le=64, description="Parallel candidate evaluations")
    max_fit_rows: int = Field(SamplePlan.fit_rows, ge=0, description="Training sessions "
                              "the candidates learn from (a uniform sample; forests draw "
                              "max_samples rows per tree anyway); 0 = all")
    max_eval_rows: int = Field(SamplePlan.eval_rows, ge=0, description="Held-out sessions "
                               "candidates are scored on (stratified by anomaly type, "
                               "weighted; the PR-AUC's standard error is logged as "
                               "pr_auc_se); 0 = all")
    em_draws: int = Field(5, ge=0, le=50, description="Feature subsets averaged for EM/MV")
    em_uniform: int = Field(10_000, ge=500, description="Uniform Monte Carlo points for EM/MV")
    em_rows: int = Field(5_000, ge=0, description="Held-out sessions EM/MV are estimated on "
                         "(a uniform sample); 0 = all")
    log_figures: bool = Field(True, description="Log PNG figures to MLflow")

    def search_space(self) -> SearchSpace:
        return SearchSpace(kinds=tuple(self.kinds), n_estimators=tuple(self.n_estimators),
                           max_samples=tuple(self.max_samples),
                           max_features=tuple(self.max_features),
                           extension_levels=tuple(self.extension_levels))

    def sample_plan(self) -> SamplePlan:
        return SamplePlan(fit_rows=self.max_fit_rows, eval_rows=self.max_eval_rows)

    def tuning_config(self) -> TuningConfig:
        return TuningConfig(alert_budget=self.alert_budget, seed=self.seed, n_jobs=self.n_jobs,
                            tolerance=self.tolerance, em_draws=self.em_draws,
                            em_uniform=self.em_uniform, em_rows=self.em_rows,
                            min_probe_recall=self.min_probe_recall,
                            trim=self.trim)
