"""Training cost against data size: ingest plus training with the default grid, per stage.

    .venv/bin/python benchmarks/training_scale.py [--sessions 10000,50000,200000]
        [--label after] [--out-dir docs] [--timeout 480] [--every-row]

Each size runs in a fresh child process, as a new user would run it: synthetic
sessions (`SynthSource`, seed 1, 2 % anomalies) through `run_ingest` into an empty
data dir, then the stages of `pipelines.models.training.run_training` with the default
`TrainParams` (the 32-candidate grid, 2 worker processes, MLflow on sqlite, figures
logged). The parent samples the resident memory of the child and all its descendants
(the loky workers) every 0.2 s; the peak of that sum is the peak RSS. `--every-row`
turns the evaluation sample off (`max_fit_rows=0, max_eval_rows=0, em_rows=0`), the behaviour
before issue 14; code without those fields simply runs its own defaults.

`--acn DIR` runs the selection check instead: the real ACN exports in DIR (never
copied into the project) are ingested and trained on with a fixed seed and the grid of
`benchmarks/evaluate_acn.py`, once per sample plan (`--plans`, e.g. `default,every-row,
2000/1000` = fit rows/eval rows), and the chosen candidate and its PR-AUC (standard
error) are recorded under `acn_selection` in the JSON.

Writes `<out-dir>/training_scale.json` (results of every label run so far, merged by
label and size) and `<out-dir>/training_scale.png` (time and peak RSS against sessions,
one line per label). Record `/proc/pressure/cpu` with the numbers: the JSON holds it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def child(sessions: int, workdir: Path, every_row: bool) -> dict:
    """One measured run in this process: ingest, then each training stage, timed."""
    stages: dict[str, float] = {}
    memory: dict[str, list[float]] = {}  # stage -> [resident GB after it, peak GB so far]
    started = time.perf_counter()
    from pipelines.data.ingest import SynthSource, run_ingest
    from pipelines.models import training
    from pipelines.models.train_params import TrainParams
    from pipelines.settings import Settings

    settings = Settings(_env_file=None, data_dir=workdir / "data", state_dir=workdir / "state",
                        mlflow_tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    stages["import"] = time.perf_counter() - started

    def timed(name: str, fn, *args, **kwargs):
        at = time.perf_counter()
        print(f"  [{sessions:,}] {name} ...", file=sys.stderr, flush=True)
        out = fn(*args, **kwargs)
        stages[name] = time.perf_counter() - at
        memory[name] = _own_memory_gb()
        print(f"  [{sessions:,}] {name}: {stages[name]:.1f} s, resident/peak "
              f"{memory[name][0]:.2f}/{memory[name][1]:.2f} GB", file=sys.stderr, flush=True)
        return out

    marks = [time.perf_counter()]

    def ingest_step(step: str, done: int, total: int) -> None:
        # steps: load (synthetic generation), features, validate, quarantine, write
        marks.append(time.perf_counter())
        stages[f"ingest.{step}"] = marks[-1] - marks[-2]
        memory[f"ingest.{step}"] = _own_memory_gb()

    ingest = timed("ingest", run_ingest, settings, SynthSource(sessions, 1, 0.02),
                   progress=ingest_step)
    params = TrainParams(max_fit_rows=0, max_eval_rows=0, em_rows=0) if every_row \
        else TrainParams()
    dataset = timed("resolve", training.resolve_dataset, settings, None)
    data = timed("prepare_data", training.prepare_data, dataset, params)
    tuning = timed("tune", training.tune_candidates, data, params)
    model = timed("build_model", training.build_model, data, tuning, params)
    _logged, version = timed("log_and_register", training.log_and_register, settings, data,
                             tuning, model, params)
    decision = timed("promote", training.promote, settings, version, model, data, tuning,
                     params)
    best = tuning.best
    return {"sessions": sessions, "added": ingest.added, "stages": stages,
            "seconds": time.perf_counter() - started, "chosen": best.candidate.name,
            "pr_auc": best.metrics.get("pr_auc"), "pr_auc_se": best.metrics.get("pr_auc_se"),
            "train_rows": len(data.split.X_train), "eval_rows": len(data.split.X_eval),
            "decision": decision.decision, "memory_gb": memory}


def _own_memory_gb() -> list[float]:
    """This process's resident memory now and its peak so far (not its workers'), in GB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if line.startswith(("VmRSS", "VmHWM")))
    return [round(int(fields[k].split()[0]) / 1024 ** 2, 3) for k in ("VmRSS", "VmHWM")]


ACN_GRID = {"max_samples": [256, 512, 1024, 2048]}  # as benchmarks/evaluate_acn.py


def acn_selection(acn: Path, plans: list[str], seed: int) -> list[dict]:
    """Chosen candidate and PR-AUC on the real exports, once per sample plan."""
    from pipelines.data.ingest import FileSource, run_ingest
    from pipelines.models import training
    from pipelines.models.train_params import TrainParams
    from pipelines.settings import Settings

    files = tuple(str(p) for p in sorted(acn.glob("*.json")))
    if not files:
        sys.exit(f"no ACN export files in {acn}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="training-acn-") as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp) / "data",
                            state_dir=Path(tmp) / "state",
                            mlflow_tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        run_ingest(settings, FileSource(files), max_failure_rate=1.0)
        dataset = training.resolve_dataset(settings, None)
        for plan in plans:
            limits = {} if plan == "default" else \
                {"max_fit_rows": 0, "max_eval_rows": 0, "em_rows": 0} if plan == "every-row" else \
                dict(zip(("max_fit_rows", "max_eval_rows"), map(int, plan.split("/")),
                         strict=True))
            params = TrainParams(seed=seed, log_figures=False, **ACN_GRID, **limits)
            started = time.perf_counter()
            data = training.prepare_data(dataset, params)
            tuning = training.tune_candidates(data, params)
            best = tuning.best
            rows.append({"plan": plan, "chosen": best.candidate.name,
                         "pr_auc": best.metrics.get("pr_auc"),
                         "pr_auc_se": best.metrics.get("pr_auc_se"),
                         "train_rows": len(data.split.X_train),
                         "eval_rows": len(data.split.X_eval),
                         "tune_seconds": round(time.perf_counter() - started, 1),
                         "pr_auc_by_candidate": {r.candidate.name: r.metrics.get("pr_auc")
                                                 for r in tuning.results}})
            print(f"ACN, plan {plan}: chose {best.candidate.name}, PR-AUC "
                  f"{best.metrics.get('pr_auc'):.4f} (se {best.metrics.get('pr_auc_se')}), "
                  f"{rows[-1]['tune_seconds']} s", file=sys.stderr, flush=True)
    return rows


def _tree_rss_kb(root: int) -> int:
    """Resident memory of `root` and all its descendants, in KiB (from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        rss[pid] = int(fields[21]) * PAGE_KB
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(rss.get(pid, 0) for pid in tree)


def measure(sessions: int, every_row: bool, timeout: float) -> dict:
    """Run one size in a child process; wall time, peak tree RSS and the child's stages."""
    with tempfile.TemporaryDirectory(prefix="training-scale-") as tmp:
        result_file = Path(tmp) / "result.json"
        argv = [sys.executable, __file__, "--child", str(sessions), "--workdir", tmp,
                "--result", str(result_file)] + (["--every-row"] if every_row else [])
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT)
        peak_kb = 0
        timed_out = False
        while proc.poll() is None:
            peak_kb = max(peak_kb, _tree_rss_kb(proc.pid))
            if time.perf_counter() - started > timeout:
                proc.kill()
                timed_out = True
                break
            time.sleep(0.2)
        proc.wait()
        wall = time.perf_counter() - started
        out = json.loads(result_file.read_text()) if result_file.exists() else {}
    return {**out, "sessions": sessions, "wall_seconds": round(wall, 1),
            "peak_rss_gb": round(peak_kb / 1024 ** 2, 3), "exit_code": proc.returncode,
            "timed_out": timed_out, "ms_per_session": round(1000 * wall / sessions, 3)}


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_rss) = plt.subplots(1, 2, figsize=(10, 4))
    for label, rows in sorted(results.items()):
        rows = sorted((r for r in rows if not r.get("timed_out")), key=lambda r: r["sessions"])
        x = [r["sessions"] for r in rows]
        ax_time.plot(x, [r["wall_seconds"] for r in rows], marker="o", label=label)
        ax_rss.plot(x, [r["peak_rss_gb"] for r in rows], marker="o", label=label)
    # issue 14's targets at 1,000,000 sessions: 10 min, 3 GB
    for ax, title, unit, target in ((ax_time, "ingest + training", "wall time (s)", 600),
                                    (ax_rss, "peak RSS, process and children", "GB", 3)):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target at 10^6")
        ax.set_xscale("log")
        ax.set_xlabel("synthetic sessions")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--sessions", default="10000,50000,200000",
                        help="comma-separated sizes (default %(default)s; add 1000000 if "
                        "time allows)")
    parser.add_argument("--label", default="after", help="name of this series in the JSON "
                        "and the plot, e.g. before/after (default %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs",
                        help="where training_scale.json and .png go (default docs/)")
    parser.add_argument("--timeout", type=float, default=480.0,
                        help="seconds after which one size is killed (default %(default)s)")
    parser.add_argument("--every-row", action="store_true",
                        help="no evaluation sample (the behaviour before issue 14)")
    parser.add_argument("--acn", type=Path, help="run the selection check on the ACN "
                        "exports in this folder instead (e.g. ../shared/acn)")
    parser.add_argument("--plans", default="default,2000/1000",
                        help="with --acn: sample plans to compare (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="with --acn: the training seed")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        args.result.write_text(json.dumps(child(args.child, args.workdir, args.every_row)))
        return

    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / "training_scale.json"
    stored = json.loads(json_path.read_text()) if json_path.exists() else {"runs": {}}
    if args.acn is not None:
        stored.setdefault("acn_selection", {})[args.label] = \
            acn_selection(args.acn, args.plans.split(","), args.seed)
        json_path.write_text(json.dumps(stored, indent=2))
        print(f"results: {json_path}")
        return
    pressure = Path("/proc/pressure/cpu").read_text().split("\n")[0] \
        if Path("/proc/pressure/cpu").exists() else ""
    rows = []
    for n in [int(s) for s in args.sessions.split(",") if s]:
        print(f"{args.label}: {n:,} sessions ...", file=sys.stderr, flush=True)
        row = measure(n, args.every_row, args.timeout)
        row["cpu_pressure_before"] = pressure
        pressure = Path("/proc/pressure/cpu").read_text().split("\n")[0] if pressure else ""
        row["cpu_pressure_after"] = pressure
        rows.append(row)
        print(f"{args.label}: {n:,} sessions: {row['wall_seconds']} s, peak RSS "
              f"{row['peak_rss_gb']} GB, chosen {row.get('chosen')} "
              f"(PR-AUC {row.get('pr_auc')}), exit {row['exit_code']}",
              file=sys.stderr, flush=True)
        kept = [r for r in stored["runs"].get(args.label, []) if r["sessions"] != n]
        stored["runs"][args.label] = sorted(kept + [row], key=lambda r: r["sessions"])
        stored["machine"] = (f"{platform.processor() or platform.machine()}, "
                             f"{os.cpu_count()} cores, Python {platform.python_version()}")
        json_path.write_text(json.dumps(stored, indent=2))
        plot(stored["runs"], args.out_dir / "training_scale.png")

    print("| sessions | wall s | ms/session | peak RSS GB | ingest s (of which synth) | "
          "prepare s | tune s | log s | chosen | PR-AUC (se) |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        st = r.get("stages", {})
        print(f"| {r['sessions']:,} | {r['wall_seconds']} | {r['ms_per_session']} | "
              f"{r['peak_rss_gb']} | {st.get('ingest', float('nan')):.1f} "
              f"({st.get('ingest.load', float('nan')):.1f}) | "
              f"{st.get('prepare_data', float('nan')):.1f} | {st.get('tune', float('nan')):.1f} | "
              f"{st.get('log_and_register', float('nan')):.1f} | {r.get('chosen')} | "
              f"{r.get('pr_auc')} ({r.get('pr_auc_se')}) |")
    print(f"\nresults: {json_path}\nplot: {args.out_dir / 'training_scale.png'}")


if __name__ == "__main__":
    main()
