"""Run a sweep's points as jobs through a Hydra launcher plugin (submitit: local processes or SLURM).

diffbench is the sweeper here, as Hydra's own sweepers are for a @hydra.main app: it expands and
validates the grid (sweep.params, comma lists, NFE policy), drops the points the results table
already holds (resume), and hands the launcher chosen with ``hydra/launcher=...`` one override list
per job through the plugin interface (``setup`` + ``launch``). Each job composes its config as any
Hydra multirun job does and runs its point, or its shard with ``--jobs N``, through
``diffbench.engine.sweep.run_sweep``, which appends the rows to the shared table under its file lock. The
parent waits for every job and reports each job or point that failed in one line.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from diffbench import results
from diffbench.config import _hydra, _one_line, parse_overrides
from diffbench.engine.points import Point, prepare
from diffbench.engine.sweep import SweepSummary, run_sweep
from diffbench.errors import UsageError, check

LAUNCHER_GROUP = "hydra/launcher"
PLAIN_VALUE = re.compile(r"[\w/.@+-]+")
MERGE_ERROR = "Error merging override "  # Hydra's message when a typed field rejects a value


@dataclass(frozen=True)
class Job:
    """One launched job: `run_sweep(overrides, shard=shard)` over the points `keys`.

    `hydra_overrides` compose the job's own Hydra config (kept in its output folder): the point's
    overrides for a one-point job, the overrides a shard's points share for a shard.
    """

    name: str
    overrides: tuple[str, ...]
    shard: tuple[int, int]
    hydra_overrides: tuple[str, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True)
class SweepTask:
    """The task function Hydra's launcher runs in every job; the job's number picks its Job."""

    jobs: tuple[Job, ...]
    retry_failed: bool
    command: tuple[str, ...]

    def __call__(self, cfg: DictConfig) -> str | None:
        """Run the job's points (their rows go to the table); return None, or the error in one line.

        `cfg` is the job's composed config, which Hydra keeps in the job's folder; the Job says what to run.
        """
        job = self.jobs[HydraConfig.get().job.num]
        print(f"{job.name}: running", flush=True)
        try:
            summary = run_sweep(job.overrides, progress=False, shard=job.shard, retry_failed=self.retry_failed,
                                command=self.command, on_row=_log_row)
            print(f"{job.name}: {summary.ran} run, {summary.skipped} already in the table, {summary.failed} failed",
                  flush=True)  # the job's log says what it did, also when it wrote no row
        except UsageError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 -- the job boundary: the parent reports it in one line
            traceback.print_exc()  # the whole traceback stays in the job's log
            return f"{type(e).__name__}: {e}".splitlines()[0]
        return None


def _log_row(row: dict[str, Any]) -> None:
    print(f"point {row[results.KEY]}: {row['status']} {row.get('reason') or ''}".rstrip(), flush=True)


@dataclass
class Launched:
    """What `launch_sweep` did: the sweep summary, one line per failure, and the number of points left
    without a row (their jobs died or still run)."""

    summary: SweepSummary
    failures: list[str]
    incomplete: int


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the sweep's overrides, the launcher's: hydra/launcher=..., hydra.launcher.*, hydra.sweep.dir=...)."""
    parsed = parse_overrides(overrides)
    launcher = [cast(str, o.input_line) for o in parsed if o.key_or_group.startswith("hydra")]
    return [cast(str, o.input_line) for o in parsed if not o.key_or_group.startswith("hydra")], launcher


def launcher_choice(launcher_overrides: Sequence[str]) -> str:
    """The `hydra/launcher=NAME` among the launcher overrides (UsageError when missing)."""
    for o in parse_overrides(launcher_overrides):
        if o.key_or_group == LAUNCHER_GROUP:
            return cast(str, o.input_line)
    raise UsageError(f"{launcher_overrides[0]}: a launcher option without a launcher; add hydra/launcher=local "
                     "(or slurm, submitit_local, submitit_slurm)")


def plan_jobs(points: Sequence[Point], todo: set[str], jobs: int, overrides: Sequence[str], out: Path) -> list[Job]:
    """One job per point still to run (jobs=0), or one per shard I/jobs holding such a point."""
    check(jobs >= 0, f"--jobs {jobs}: give 0 (one job per point) or a number of jobs >= 1")
    pinned = f"out={_quote(str(out))}"
    if jobs == 0:
        return [Job(f"point {p.key} ({p.label})", (*_without_out(p.overrides), pinned), (0, 1),
                    (*_without_out(p.overrides), pinned), (p.key,)) for p in points if p.key in todo]
    shared = [cast(str, o.input_line) for o in parse_overrides(overrides) if not o.is_sweep_override()]
    planned = []
    for index in range(jobs):
        keys = tuple(p.key for p in points[index::jobs] if p.key in todo)
        if keys:
            planned.append(Job(f"shard {index}/{jobs}", (*_without_out(overrides), pinned), (index, jobs),
                               (*_without_out(shared), pinned), keys))
    return planned


def _without_out(overrides: Sequence[str]) -> list[str]:
    return [cast(str, o.input_line) for o in parse_overrides(overrides) if o.key_or_group != "out"]


def _quote(value: str) -> str:
    """A string as a Hydra override value (quoted unless plain)."""
    return value if PLAIN_VALUE.fullmatch(value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def launch_sweep(overrides: Sequence[str], launcher_overrides: Sequence[str], *, jobs: int = 0,
                 retry_failed: bool = False, command: Sequence[str] | None = None,
                 echo: Callable[[str], None] = lambda line: None) -> Launched:
    """Run the sweep's points still missing from the table as jobs of the chosen Hydra launcher; wait for all."""
    choice = launcher_choice(launcher_overrides)
    points = prepare(overrides)
    out = Path(str(points[0].cfg.out)).resolve()
    table = results.table_paths(out).parquet
    todo = {p.key for p in points} - results.done_keys(table, ok_only=retry_failed)
    planned = plan_jobs(points, todo, jobs, overrides, out)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    given = {o.key_or_group for o in parse_overrides(launcher_overrides)}
    defaults = [] if "hydra.sweep.dir" in given else [f"hydra.sweep.dir={_quote(str(out / 'jobs' / stamp))}"]
    task = SweepTask(tuple(planned), retry_failed, tuple(command or ()))
    returns: Sequence[JobReturn] = []
    error = None
    with _hydra():
        launcher, log_dir = _launcher(choice, [*launcher_overrides, *defaults], task)  # validated even if all done
        if planned:
            echo(f"launching {len(planned)} jobs with {choice}; logs under {log_dir}")
            wave = int(points[0].cfg.sweep.max_local_jobs or os.cpu_count() or 1)
            returns, error = _launch(launcher, choice, planned, wave)
    stored = _stored(table, todo)
    failures = _failures(planned, returns, error, stored, [p for p in points if p.key in todo], log_dir)
    ok = sum(status == "ok" for status, _ in stored.values())
    summary = SweepSummary(table, [p.key for p in points], len(todo), len(points) - len(todo), len(todo) - ok)
    return Launched(summary, failures, len(todo) - len(stored))


def _stored(table: Path, keys: set[str]) -> dict[str, tuple[str, str | None]]:
    """key -> (status, reason) of the table's rows for `keys`."""
    df = results.load(table)
    if df.empty:
        return {}
    rows = df[df[results.KEY].isin(keys)]
    return {str(r[results.KEY]): (str(r["status"]), r.get("reason")) for r in rows.to_dict("records")}


def _launcher(choice: str, overrides: list[str], task: SweepTask) -> tuple[Any, Path]:
    """The launcher plugin set up on the multirun config that `overrides` compose (UsageError if invalid)."""
    hydra = GlobalHydra.instance().hydra
    assert hydra is not None  # called inside _hydra()
    try:
        cfg = hydra.compose_config("config", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))  # as Hydra.multirun
        launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=task, config=cfg)
    except (HydraException, OmegaConfBaseException, ImportError, TypeError, ValueError) as e:
        raise UsageError(_launcher_error(choice, e)) from None
    _check_launcher(choice, cfg.hydra.launcher)
    return launcher, Path(str(cfg.hydra.sweep.dir))


def _launcher_error(choice: str, e: Exception) -> str:
    """A launcher config error in one line; a rejected value names its override and why."""
    text = _one_line(e)
    if text.startswith(MERGE_ERROR) and e.__cause__ is not None:
        text = f"{text.removeprefix(MERGE_ERROR)}: {_first_line(e.__cause__)}"
    return text if text.startswith("hydra") else f"{choice}: {text}"


def _check_launcher(choice: str, launcher: DictConfig) -> None:
    """Launcher settings a diffbench job cannot use."""
    if str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
        check(not missing, f"{choice}: {' and '.join(missing)} not on PATH; submit from a SLURM login node, "
                           "or use hydra/launcher=local")
    for key in ("nodes", "tasks_per_node"):
        check(launcher.get(key, 1) == 1, f"hydra.launcher.{key}={launcher.get(key)}: a diffbench job is one process; "
                                         "leave it at 1 and spread points over jobs (one per point, or --jobs N)")


def _launch(launcher: Any, choice: str, planned: list[Job], wave: int) -> tuple[Sequence[JobReturn], str | None]:
    """launcher.launch(...), waiting for every job: (its returns, or the error that stopped the waiting).

    Local processes run in waves of at most `wave` jobs (sweep.max_local_jobs, default the machine's
    cores), so a large grid does not start hundreds of processes at once; a cluster queues them itself.
    """
    import submitit

    size = wave if getattr(launcher, "_EXECUTOR", None) == "local" else len(planned)
    returns: list[JobReturn] = []
    try:
        for start in range(0, len(planned), size):
            part = planned[start:start + size]
            returns += launcher.launch([list(j.hydra_overrides) for j in part], initial_job_idx=start)
        return returns, None
    except submitit.core.utils.UncompletedJobError as e:
        if isinstance(e.__cause__, subprocess.CalledProcessError):  # the submission command itself failed
            raise UsageError(f"{choice}: submission failed: {_first_line(e)}") from None
        return returns, _first_line(e)
    except (RuntimeError, ValueError, TypeError) as e:  # the executor rejected its parameters before submitting
        raise UsageError(f"{choice}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def _failures(planned: list[Job], returns: Sequence[JobReturn], error: str | None,
              stored: dict[str, tuple[str, str | None]], todo: list[Point], log_dir: Path) -> list[str]:
    """One line per failed job, per point stored as failed, and per point left without a row."""
    lines = [f"jobs stopped: {error}"] if error else []
    reported: set[str] = set()
    for job, ret in zip(planned, returns):
        try:
            problem = ret.return_value  # SweepTask never raises: an exception here is Hydra's own
        except Exception as e:  # noqa: BLE001 -- reported in one line
            problem = _first_line(e)
        if problem:
            lines.append(f"{job.name} failed: {problem}")
            reported.update(job.keys)
    for p in todo:
        status, reason = stored.get(p.key, (None, None))
        if status is not None and status != "ok":
            lines.append(f"point {p.key} failed: {reason}")
        elif status is None and p.key not in reported:
            lines.append(f"point {p.key} ({p.label}): no row yet; its job died or still runs (logs under {log_dir}); "
                         "rerun to resume")
    return lines
