"""Training data: which dataset, the time split, labels and impossible-power probes.

The split is by time: the latest `eval_fraction` of sessions (by
connectionTime) is held out, so candidates are judged on sessions after the
ones they learned from, as in serving. When the dataset has no labels, a share
`inject_rate` of the held-out sessions is turned into labelled anomalies with
`pipelines.data.anomalies.inject_anomalies` (training rows stay untouched), so the
labelled criterion (PR-AUC) is available; `inject_rate=0` selects by EM/MV.
Large data sets are then cut to `fit_rows` training and `eval_rows` held-out rows
(`pipelines.models.sampling`), so tuning costs the same at any size.
Probes are held-out sessions rewritten to impossible power; every model that
is chosen or promoted must flag most of them. Station context (feature version
f3) is replayed in event time over the whole dataset: held-out sessions, planted
faults and probes carry the training sessions' history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.data import datasets
from pipelines.data.anomalies import inject_anomalies
from pipelines.data.datasets import Dataset
from pipelines.data.features import (
    FEATURE_COLUMNS,
    FEATURE_VERSION,
    feature_matrix,
    join_facts,
)
from pipelines.data.memory import release_freed_memory
from pipelines.models.candidates import EvalSplit
from pipelines.models.sampling import sample_split
from pipelines.models.tracking import DatasetInfo
from pipelines.models.train_params import TrainParams
from pipelines.settings import Settings
from pipelines.stations.context import (
    CONTEXT_KEYS,
    replay_context_array,
    replay_contexts,
    session_facts,
)


class TrainingDataError(ValueError):
    """The dataset cannot be trained on: missing, failed validation, or too small."""


@dataclass
class TrainingData:
    dataset_id: str
    info: DatasetInfo
    split: EvalSplit
    feature_columns: list[str]
    feature_version: str


def resolve_dataset(settings: Settings, dataset_id: str | None) -> Dataset:
    """The dataset to train on.

    Raises:
        TrainingDataError: no dataset, unknown id, or the dataset failed validation.
    """
    if dataset_id is None:
        try:
            return datasets.latest_dataset(settings)
        except datasets.DatasetNotFound as exc:
            raise TrainingDataError(str(exc)) from None
    found = {d.dataset_id: d for d in datasets.list_datasets(settings.data_dir)}
    if dataset_id not in found:
        raise TrainingDataError(f"dataset {dataset_id!r} not found under "
                                f"{datasets.datasets_dir(settings.data_dir)}; known: "
                                f"{', '.join(sorted(found)[-5:]) or 'none'}")
    dataset = found[dataset_id]
    if not dataset.manifest.get("validation_passed"):
        summary = dataset.manifest.get("validation", {})
        raise TrainingDataError(f"dataset {dataset_id} failed validation and cannot be trained "
                                f"on: {summary.get('failed') or summary}")
    return dataset


def prepare_data(dataset: Dataset, params: TrainParams) -> TrainingData:
    """Time-ordered train/held-out split of a dataset, with labels or injected anomalies.

    Memory: the model input comes from the features table; sessions become dicts one
    chunk at a time, unless the features must be recomputed or anomalies injected.
    """
    sessions = dataset.sessions()
    features = dataset.features()
    records = None
    if dataset.feature_version != FEATURE_VERSION or len(features) != len(sessions):
        records = dataset.records()
        features = feature_matrix(records)  # recompute with today's feature code
    n_eval = round(len(sessions) * params.eval_fraction)
    if len(sessions) - n_eval < 50 or n_eval < 20:
        raise TrainingDataError(f"dataset {dataset.dataset_id} has {len(sessions)} sessions; "
                                "need at least 50 to train and 20 to evaluate")
    X = features[FEATURE_COLUMNS].to_numpy(dtype=np.float64)
    labels = dataset.labels()
    n_train = len(sessions) - n_eval
    held_out_ids = sessions["sessionID"].iloc[n_train:]
    eval_ids = [str(i) for i in held_out_ids.astype(object).where(held_out_ids.notna(), None)]
    types = np.array([labels.get(i, "") for i in eval_ids], dtype=object)
    X_eval, source = X[n_train:], "dataset"
    if not (types != "").any():
        if params.inject_rate > 0:
            records = records or dataset.records()
            injected, new_labels = inject_anomalies(records[n_train:], params.inject_rate,
                                                    seed=params.seed)
            # replayed after the training rows: the planted faults' station context carries
            # that history, and they update the profiles like any session (serving cannot know)
            X_eval = feature_matrix(records[:n_train] + injected)[FEATURE_COLUMNS] \
                .to_numpy(dtype=np.float64)[n_train:]
            types = np.array([new_labels.get(i, "") for i in eval_ids], dtype=object)
            source = "injected"
        else:
            types, source = None, "none"
    info = DatasetInfo(dataset.dataset_id, dataset.manifest.get("content_hash", ""),
                       FEATURE_VERSION, source, len(sessions))
    probes = held_out_probes(sessions, n_train, params.probes, params.seed)
    del records, sessions, features
    release_freed_memory()  # the sessions' pages, before tuning
    split = sample_split(EvalSplit(X[:n_train], X_eval, types, probes), params.sample_plan(),
                         params.seed)
    return TrainingData(dataset.dataset_id, info, split, list(FEATURE_COLUMNS), FEATURE_VERSION)


def impossible_power_probes(records: list[dict], n: int, seed: int,
                            history: list[dict] | None = None) -> np.ndarray | None:
    """Features of `n` sessions rewritten to 40-75 kWh in 8-30 min (None when `n` is 0).

    Each probe keeps the station context of the session it rewrites (replayed after
    `history`); probes are scored, never observed, so they do not shape each other's.
    """
    if n == 0 or not records:
        return None
    indices = _probe_positions(len(records), n, seed)
    history = history or []
    contexts = replay_contexts(history + records)[len(history):]
    return _probe_features([records[i] for i in indices], [contexts[i] for i in indices], seed)


def held_out_probes(sessions: pd.DataFrame, n_train: int, n: int, seed: int
                    ) -> np.ndarray | None:
    """`impossible_power_probes(records[n_train:], n, seed, history=records[:n_train])` with
    `records` the rows of a sessions table, read one chunk of dicts at a time."""
    if n == 0 or len(sessions) <= n_train:
        return None
    rows = [n_train + i for i in _probe_positions(len(sessions) - n_train, n, seed)]
    wanted, chosen, facts, first = set(rows), [], [], 0
    for chunk in datasets.table_chunks(sessions):
        facts.append(session_facts(chunk))
        chosen += [chunk[i - first] for i in range(first, first + len(chunk)) if i in wanted]
        first += len(chunk)
    contexts = replay_context_array(join_facts(facts))[rows].tolist()
    return _probe_features(chosen, [dict(zip(CONTEXT_KEYS, c, strict=True)) for c in contexts],
                           seed)


def _probe_positions(n_records: int, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_records, min(n, n_records), replace=False).tolist())


def _probe_features(records: list[dict], contexts: list[dict[str, float]],
                    seed: int) -> np.ndarray:
    probes, _ = inject_anomalies(records, 1.0, seed=seed, types=("impossible_power",))
    return feature_matrix(probes, contexts)[FEATURE_COLUMNS].to_numpy(dtype=np.float64)
