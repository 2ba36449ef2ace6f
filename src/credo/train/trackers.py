"""Logging backends beside metrics.jsonl, chosen with `run.trackers` (rank 0 only).

    TRACKERS.get("tensorboard")  # event files under <run>/tensorboard   (pip install 'credo[tensorboard]')
    TRACKERS.get("wandb")        # an offline W&B run under <run>/wandb  (pip install 'credo[wandb]')

metrics.jsonl stays the record of the run: every row is written there first, then handed to each
tracker (`TrackedWriter`). Each backend's package is imported only when its tracker is created, so
credo imports and trains without either installed. A tracker that raises while logging is switched
off with one warning line on stderr and training goes on: a dashboard is not worth a lost run. W&B
runs in offline mode only and never contacts a server; upload later with
`wandb sync <run>/wandb/offline-run-*`.

Tags and steps (the same for both backends), from the rows the trainer writes:
  warm-up row  -> `warmup/<key>` at step = the row's "step" (warm-up step, from 0)
  RL row       -> `rl/<key>` at step = the row's "step" (RL step, from 0)
  eval row     -> `eval/<stage>/<key>` at step = the RL steps done when it ran: the row's "step"
                  where it has one (stage "rl_step", task.eval_every), else 0 for "base" and
                  "warmup" and rl.steps for "rl" (the final one). So `eval/rl_step/accuracy` is
                  the held-out curve over RL steps, the other stages single points.
Only finite numbers become scalars (int and float; not bool, None, NaN, inf, strings, lists).
Each phase keeps its own step axis: TensorBoard's tag carries it; W&B logs `<phase>/step` with every
row and plots `<phase>/*` against it (define_metric), since its own `_step` only counts log calls.

Resume: `credo train --resume` cuts metrics.jsonl back to the checkpoint and calls the writer's
`reopen()`; the trackers then start again from the kept rows (`restart`). TensorBoard deletes the
event files in <run>/tensorboard and replays the kept rows into a fresh one, so the curves hold no
steps that the resumed run redoes. (TensorBoard's own `purge_step` cannot do this: it drops every
tag's events from that step on, and warm-up, RL and eval steps share numbers.) W&B cannot edit an
offline run, so the resumed process writes a new offline run holding the kept rows and what
follows; that newest `offline-run-*` folder is the complete one to sync.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Protocol

from credo.errors import CredoError
from credo.registry import Registry
from credo.train.logging import MetricsWriter, read_metrics

_NOT_SCALARS = ("phase", "stage", "step")  # row structure, carried by the tag and the step


class Tracker(Protocol):
    """What a logging backend implements; constructed as cls(run_dir, config=..., run_name=...)."""

    def log(self, record: dict[str, Any]) -> None: ...

    def restart(self, rows: list[dict[str, Any]]) -> None:
        """Forget what was logged so far and log `rows` instead (metrics.jsonl was rewritten)."""

    def close(self) -> None: ...


TRACKERS: Registry[type] = Registry("tracker")


def scalars(record: dict[str, Any], final_rl_step: int) -> tuple[str, int, dict[str, float | int]]:
    """(phase, step, {tag: value}) of one metrics row, by the conventions of the module docstring."""
    phase = str(record.get("phase", "other"))
    step = record.get("step")
    if phase == "eval":
        stage = str(record.get("stage", "unknown"))
        prefix = f"eval/{stage}"
        if not _is_number(step):
            step = final_rl_step if stage == "rl" else 0
    else:
        prefix = phase
        if not _is_number(step):
            step = 0
    values = {f"{prefix}/{key}": value for key, value in record.items()
              if key not in _NOT_SCALARS and _is_number(value)}
    return phase, int(step), values


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True/False flags plot as meaningless 0/1 curves
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _final_rl_step(config: dict[str, Any]) -> int:
    rl = config.get("rl")
    steps = rl.get("steps") if isinstance(rl, dict) else None
    return int(steps) if _is_number(steps) else 0


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """Scalars into TensorBoard event files under <run>/tensorboard (torch.utils.tensorboard)."""

    def __init__(self, run_dir: Path, *, config: dict[str, Any], run_name: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's module raises ImportError when tensorboard is absent
            raise CredoError("run.trackers \"tensorboard\" needs the tensorboard package: "
                             "pip install 'credo[tensorboard]'") from exc
        self._summary_writer = SummaryWriter
        self.log_dir = Path(run_dir) / "tensorboard"
        self.final_rl_step = _final_rl_step(config)
        self._writer = self._open()

    def _open(self):
        # flush_secs: a TensorBoard watching the run live sees new steps within seconds (default 120)
        return self._summary_writer(log_dir=str(self.log_dir), flush_secs=10)

    def log(self, record: dict[str, Any]) -> None:
        _, step, values = scalars(record, self.final_rl_step)
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)

    def restart(self, rows: list[dict[str, Any]]) -> None:
        """Replace every event file of the folder with one holding `rows` (see the module docstring)."""
        self._writer.close()
        for path in self.log_dir.glob("events.out.tfevents.*"):
            path.unlink()
        self._writer = self._open()
        for row in rows:
            self.log(row)
        self._writer.flush()

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


@TRACKERS.register("wandb")
class WandbTracker:
    """An offline Weights & Biases run under <run>/wandb; nothing leaves the machine."""

    def __init__(self, run_dir: Path, *, config: dict[str, Any], run_name: str):
        try:
            import wandb
        except ImportError as exc:
            raise CredoError("run.trackers \"wandb\" needs the wandb package: pip install 'credo[wandb]'") from exc
        self._wandb = wandb
        self.run_dir, self.config, self.run_name = Path(run_dir), config, run_name
        self.final_rl_step = _final_rl_step(config)
        self._run = self._start()

    def _start(self):
        wandb = self._wandb
        # offline always: arguments of wandb.init win over WANDB_MODE and the settings files. The rest
        # keeps the run light and quiet: no stdout/stderr capture (credo's own lines stay as they are),
        # no system-metrics sampler, no machine / git / pip probes, no code copy.
        settings = wandb.Settings(mode="offline", console="off", silent=True, disable_git=True, save_code=False,
                                  x_disable_stats=True, x_disable_machine_info=True, x_disable_meta=True,
                                  x_save_requirements=False)
        try:
            # reinit "create_new": each training in one process (tests, sweeps from Python) gets its own run
            run = wandb.init(mode="offline", dir=str(self.run_dir), project="credo", name=self.run_name,
                             config=self.config, reinit="create_new", settings=settings)
        except Exception as exc:  # wandb raises its own error types; say which setting brought it in
            raise CredoError(f"run.trackers \"wandb\": cannot start the offline W&B run in {self.run_dir} "
                             f"({type(exc).__name__}: {exc})") from exc
        self._phases: set[str] = set()
        self._logged = 0
        return run

    def log(self, record: dict[str, Any]) -> None:
        phase, step, values = scalars(record, self.final_rl_step)
        if not values:
            return
        if phase not in self._phases:  # each phase's scalars plotted against its own step
            self._run.define_metric(f"{phase}/step", hidden=True)
            self._run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
            self._phases.add(phase)
        self._run.log({f"{phase}/step": step, **values})
        self._logged += 1

    def restart(self, rows: list[dict[str, Any]]) -> None:
        """Log `rows` into a run that holds nothing else (a new one if this one has rows already)."""
        if self._logged:
            self._run.finish()
            self._run = self._start()
        for row in rows:
            self.log(row)

    def close(self) -> None:
        self._run.finish()


class TrackedWriter:
    """A metrics writer that also feeds trackers: metrics.jsonl first, then each tracker; a tracker
    that fails is warned about once and dropped, so training never stops for a dashboard."""

    def __init__(self, inner: MetricsWriter, trackers: dict[str, Tracker]):
        self.inner = inner
        self.trackers = dict(trackers)

    def write(self, record: dict[str, Any]) -> None:
        self.inner.write(record)
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.log(record)
            except Exception as exc:  # any backend failure (disk, a package bug): warn, drop, go on
                self._switch_off(name, exc)

    def reopen(self) -> None:
        """Follow the rewritten metrics.jsonl, and make each tracker start again from its rows (resume)."""
        self.inner.reopen()
        if not self.trackers:
            return
        rows = read_metrics(self.inner.path)
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.restart(rows)
            except Exception as exc:
                self._switch_off(name, exc)

    def close(self) -> None:
        try:
            self.inner.close()  # first: metrics.jsonl is the record that must be complete
        finally:
            for name, tracker in self.trackers.items():
                try:
                    tracker.close()
                except Exception as exc:  # the run is over; a backend that cannot finish only loses its own copy
                    print(f"credo: tracker {name} failed to close ({type(exc).__name__}: {exc})",
                          file=sys.stderr, flush=True)
            self.trackers = {}

    def _switch_off(self, name: str, exc: Exception) -> None:
        print(f"credo: tracker {name} failed ({type(exc).__name__}: {exc}); it is switched off for the rest "
              f"of the run", file=sys.stderr, flush=True)
        tracker = self.trackers.pop(name)
        try:
            tracker.close()  # release its files / service if it still can
        except Exception:  # already reported as switched off: a second line about it would add nothing
            pass


PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the package it imports


def check_trackers(names: list[str]) -> None:
    """Refuse a tracker whose package is not installed, before anything loads or the run folder is made
    (train/run.py::validate); the trackers themselves still import only when created."""
    import importlib.util

    for name in names:
        package = PACKAGES.get(name)
        if package is not None and importlib.util.find_spec(package) is None:
            raise CredoError(f"run.trackers {name!r} needs the {package} package: pip install 'credo[{name}]'")


def make_writer(inner: MetricsWriter, names: list[str], run_dir: Path, *, config: dict[str, Any],
                run_name: str) -> MetricsWriter | TrackedWriter:
    """`inner` itself when no tracker is named (no wrapper, no imports), else a TrackedWriter over it.

    A tracker that cannot start (package missing, W&B refusing the folder) is a CredoError here, at
    setup, before any training: the user asked for it, so silently training without it would be worse."""
    if not names:
        return inner
    trackers: dict[str, Tracker] = {}
    try:
        for name in names:
            trackers[name] = TRACKERS.get(name)(Path(run_dir), config=config, run_name=run_name)
    except BaseException:
        for started in trackers.values():  # do not leave a W&B run or an event file writer open
            started.close()
        inner.close()
        raise
    return TrackedWriter(inner, trackers)
