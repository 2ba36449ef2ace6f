"""run.trackers: TensorBoard event files and offline W&B runs beside metrics.jsonl (train/trackers.py).

Values are read back with each backend's own format: TensorBoard's EventAccumulator, and the W&B
offline run's `run-<id>.wandb` record log (the file `wandb sync` uploads), parsed with wandb's protobuf."""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from credo.cli import resolve_config
from credo.errors import CredoError
from credo.train.logging import MetricsWriter, read_metrics, rewrite_metrics
from credo.train.trackers import TRACKERS, TrackedWriter, make_writer

CONFIG = {"rl": {"steps": 2}, "run": {"name": "t"}}  # the final "rl" evaluation sits at RL step 2

RECORDS = [
    {"phase": "eval", "stage": "base", "accuracy": 0.125, "n": 16, "label": "greedy"},
    {"phase": "warmup", "step": 0, "loss": 1.5, "lr": 1e-3},
    {"phase": "warmup", "step": 1, "loss": 1.25, "lr": 2e-3},
    {"phase": "eval", "stage": "warmup", "accuracy": 0.25, "n": 16},
    {"phase": "rl", "step": 0, "reward_mean": 0.25, "updates": 2, "snr": float("nan"), "kl": None,
     "objective": "grpo", "stopped": True, "lengths": [3, 4]},
    {"phase": "eval", "stage": "rl_step", "step": 1, "accuracy": 0.3125},
    {"phase": "rl", "step": 1, "reward_mean": 0.75, "updates": 1, "snr": float("inf"), "kl": 0.01,
     "objective": "grpo", "stopped": False, "lengths": [5]},
    {"phase": "eval", "stage": "rl", "accuracy": 0.375, "n": 16},
]
# (tag, [(step, value)]) of RECORDS: NaN / inf / None / str / bool / list fields are no scalars
EXPECTED = {
    "eval/base/accuracy": [(0, 0.125)], "eval/base/n": [(0, 16)],
    "warmup/loss": [(0, 1.5), (1, 1.25)], "warmup/lr": [(0, 1e-3), (1, 2e-3)],
    "eval/warmup/accuracy": [(0, 0.25)], "eval/warmup/n": [(0, 16)],
    "rl/reward_mean": [(0, 0.25), (1, 0.75)], "rl/updates": [(0, 2), (1, 1)], "rl/kl": [(1, 0.01)],
    "eval/rl_step/accuracy": [(1, 0.3125)],
    "eval/rl/accuracy": [(2, 0.375)], "eval/rl/n": [(2, 16)],
}


def _tensorboard(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_scalars(got, expected):
    assert set(got) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag  # (float32)


def _writer(run_dir: Path, names: list[str]):
    run_dir.mkdir(parents=True, exist_ok=True)
    return make_writer(MetricsWriter(run_dir / "metrics.jsonl"), names, run_dir, config=CONFIG, run_name="t")


def test_tensorboard_holds_every_finite_number_at_its_phase_step(tmp_path):
    writer = _writer(tmp_path, ["tensorboard"])
    assert isinstance(writer, TrackedWriter)
    for record in RECORDS:
        writer.write(record)
    writer.close()
    _assert_scalars(_tensorboard(tmp_path / "tensorboard"), EXPECTED)


def test_metrics_jsonl_is_the_same_with_and_without_trackers(tmp_path):
    plain = _writer(tmp_path / "plain", [])
    assert type(plain) is MetricsWriter  # no tracker: no wrapper at all
    tracked = _writer(tmp_path / "tracked", ["tensorboard"])
    for record in RECORDS:
        plain.write(record)
        tracked.write(record)
    plain.close()
    tracked.close()
    text = (tmp_path / "plain" / "metrics.jsonl").read_text()
    assert (tmp_path / "tracked" / "metrics.jsonl").read_text() == text
    assert len(text.splitlines()) == len(RECORDS) and json.loads(text.splitlines()[4])["snr"] is None


class _Broken:
    closed = 0

    def __init__(self, run_dir, *, config, run_name):
        pass

    def log(self, record):
        raise RuntimeError("disk full")

    def restart(self, rows):
        raise AssertionError("a switched-off tracker is never called again")

    def close(self):
        type(self).closed += 1


def test_a_failing_tracker_is_switched_off_with_one_warning_and_training_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TRACKERS._items, "broken", _Broken)
    monkeypatch.setattr(_Broken, "closed", 0)
    writer = _writer(tmp_path, ["broken", "tensorboard"])
    for record in RECORDS:
        writer.write(record)  # does not raise
    rewrite_metrics(tmp_path / "metrics.jsonl", read_metrics(tmp_path / "metrics.jsonl"))
    writer.reopen()
    writer.close()
    err = capsys.readouterr().err.splitlines()
    assert err == ["credo: tracker broken failed (RuntimeError: disk full); it is switched off for the rest of the run"]
    assert _Broken.closed == 1  # released once when switched off, not again at the end
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == len(RECORDS)
    _assert_scalars(_tensorboard(tmp_path / "tensorboard"), EXPECTED)  # the other tracker saw every row


def test_a_tracker_failing_to_close_is_warned_about_after_metrics_are_closed(tmp_path, monkeypatch, capsys):
    class _BadClose(_Broken):
        def log(self, record):
            pass

        def close(self):
            raise OSError("gone")

    monkeypatch.setitem(TRACKERS._items, "badclose", _BadClose)
    writer = _writer(tmp_path, ["badclose"])
    writer.write(RECORDS[0])
    writer.close()
    assert writer.inner._file.closed
    assert capsys.readouterr().err.splitlines() == ["credo: tracker badclose failed to close (OSError: gone)"]


def test_resume_replays_the_kept_rows_so_tensorboard_holds_no_redone_steps(tmp_path):
    rl = [{"phase": "rl", "step": s, "reward_mean": 0.1 * s} for s in range(4)]
    writer = _writer(tmp_path, ["tensorboard"])
    for record in RECORDS[:4] + rl:  # eval base, warm-up, eval warmup, RL steps 0..3
        writer.write(record)
    writer.close()
    # a resumed process: a new writer, metrics.jsonl cut back to RL step 2 (train/run.py::restore)
    writer = _writer(tmp_path, ["tensorboard"])
    rewrite_metrics(tmp_path / "metrics.jsonl", read_metrics(tmp_path / "metrics.jsonl")[:4 + 2])
    writer.reopen()
    for s in (2, 3):  # redone with other values
        writer.write({"phase": "rl", "step": s, "reward_mean": 1.0 + s})
    writer.close()
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    got = _tensorboard(tmp_path / "tensorboard")
    assert [s for s, _ in got["rl/reward_mean"]] == [0, 1, 2, 3]
    assert [v for _, v in got["rl/reward_mean"]] == pytest.approx([0.0, 0.1, 3.0, 4.0], rel=1e-6)
    assert got["warmup/loss"] == [(0, 1.5), (1, 1.25)]  # rows before the checkpoint are all kept
    assert got["eval/base/accuracy"] == [(0, 0.125)] and [s for s, _ in got["warmup/lr"]] == [0, 1]


# -- W&B offline -------------------------------------------------------------------------------------


def _wandb_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, folder in (("WANDB_DIR", "wandb_default"), ("WANDB_CONFIG_DIR", "wandb_config"),
                        ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data")):
        monkeypatch.setenv(var, str(tmp_path / folder))  # nothing under the home folder


def _wandb_records(run_file: Path):
    """The records of an offline run: its .wandb file is a LevelDB-style log (32 KiB blocks of
    crc32 / length / type-framed chunks after a 7-byte ':W&B' header) of wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding at the end of a block
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            yield pb.Record.FromString(pending)
            pending = b""


def _wandb_history(run_file: Path) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in _wandb_records(run_file) if r.WhichOneof("record_type") == "history"]


def _offline_runs(run_dir: Path) -> list[Path]:
    """The offline runs' .wandb files, oldest first (by the start time each records: folder names
    sort by a random id within one second)."""
    def started(path: Path) -> float:
        (run,) = [r.run for r in _wandb_records(path) if r.WhichOneof("record_type") == "run"]
        return run.start_time.ToNanoseconds()

    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"), key=started)


def test_wandb_writes_an_offline_run_with_each_phase_on_its_own_step(tmp_path, monkeypatch):
    _wandb_env(tmp_path, monkeypatch)
    writer = _writer(tmp_path / "run", ["wandb"])
    for record in RECORDS:
        writer.write(record)
    writer.close()
    assert not (tmp_path / "wandb_default").exists()  # the run folder, not WANDB_DIR
    (run_file,) = _offline_runs(tmp_path / "run")
    assert run_file.parent.parent == tmp_path / "run" / "wandb" and run_file.stat().st_size > 0
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in _wandb_history(run_file)]
    assert rows == [
        {"eval/step": 0, "eval/base/accuracy": 0.125, "eval/base/n": 16},
        {"warmup/step": 0, "warmup/loss": 1.5, "warmup/lr": 1e-3},
        {"warmup/step": 1, "warmup/loss": 1.25, "warmup/lr": 2e-3},
        {"eval/step": 0, "eval/warmup/accuracy": 0.25, "eval/warmup/n": 16},
        {"rl/step": 0, "rl/reward_mean": 0.25, "rl/updates": 2},
        {"eval/step": 1, "eval/rl_step/accuracy": 0.3125},
        {"rl/step": 1, "rl/reward_mean": 0.75, "rl/updates": 1, "rl/kl": 0.01},
        {"eval/step": 2, "eval/rl/accuracy": 0.375, "eval/rl/n": 16},
    ]


def test_wandb_after_a_resume_holds_the_kept_rows_in_a_new_offline_run(tmp_path, monkeypatch):
    _wandb_env(tmp_path, monkeypatch)
    run_dir = tmp_path / "run"
    writer = _writer(run_dir, ["wandb"])
    for s in range(3):
        writer.write({"phase": "rl", "step": s, "reward_mean": float(s)})
    rewrite_metrics(run_dir / "metrics.jsonl", read_metrics(run_dir / "metrics.jsonl")[:1])
    writer.reopen()  # (a resumed process calls it before writing; here the run already has rows)
    writer.write({"phase": "rl", "step": 1, "reward_mean": 5.0})
    writer.close()
    first, second = _offline_runs(run_dir)
    history = [[(r["rl/step"], r["rl/reward_mean"]) for r in _wandb_history(run)] for run in (first, second)]
    assert history == [[(0, 0.0), (1, 1.0), (2, 2.0)], [(0, 0.0), (1, 5.0)]]


# -- imports, missing packages, config ---------------------------------------------------------------


def test_a_missing_package_is_a_credo_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    for name, extra in (("wandb", "credo[wandb]"), ("tensorboard", "credo[tensorboard]")):
        run_dir = tmp_path / name
        run_dir.mkdir()
        inner = MetricsWriter(run_dir / "metrics.jsonl")
        with pytest.raises(CredoError, match=re.escape(f"run.trackers \"{name}\" needs the {name} package: "
                                                       f"pip install '{extra}'")):
            make_writer(inner, [name], run_dir, config=CONFIG, run_name="t")
        assert inner._file.closed


def test_the_trackers_module_imports_neither_backend():
    import subprocess

    code = ("import sys, credo.train.trackers; "
            "print(sorted(m for m in ('wandb', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_config_accepts_known_trackers_and_refuses_unknown_or_repeated_names(tmp_path):
    assert resolve_config("tiny", None, [("run.trackers", '["tensorboard"]')]).run.trackers == ["tensorboard"]
    both = resolve_config("tiny", None, [("run.trackers", "tensorboard,wandb")])  # (the comma form)
    assert both.run.trackers == ["tensorboard", "wandb"]
    assert resolve_config("tiny", None, []).run.trackers == []
    assert sorted(TRACKERS.names()) == ["tensorboard", "wandb"]  # the names the config lets through
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"run": {"trackers": ["wandb"]}}))
    assert resolve_config(None, str(file), []).run.trackers == ["wandb"]
    for value in ('["tensorbord"]', "wandb,wandb", '["tensorboard", "mlflow"]'):
        with pytest.raises(CredoError, match=r"config field run\.trackers: .* expected a list of distinct names "
                                             r"from tensorboard, wandb"):
            resolve_config("tiny", None, [("run.trackers", value)])


# -- end to end ---------------------------------------------------------------------------------------


def test_a_tiny_training_run_and_its_resume_feed_tensorboard_the_values_of_metrics_jsonl(tmp_path):
    import shutil

    from credo.presets import tiny
    from credo.train.run import train

    cfg = tiny()
    cfg.model.threads = 1
    cfg.run.out_dir, cfg.run.name, cfg.run.progress = str(tmp_path), "tb", False
    cfg.task.eval_size = 4
    cfg.run.eval_base, cfg.warmup.steps, cfg.rl.steps, cfg.run.checkpoint_every = False, 1, 2, 1
    cfg.run.trackers = ["tensorboard"]
    run_dir = tmp_path / "tb"

    def check(summary):
        rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["phase"] == "rl"]
        got = _tensorboard(run_dir / "tensorboard")
        assert [s for s, _ in got["rl/reward_mean"]] == list(range(cfg.rl.steps)) == [r["step"] for r in rows]
        assert [v for _, v in got["rl/reward_mean"]] == pytest.approx([r["reward_mean"] for r in rows], rel=1e-6)
        assert [v for _, v in got["rl/loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
        assert got["eval/rl/accuracy"] == [(cfg.rl.steps, pytest.approx(summary["rl"]["accuracy"], rel=1e-6))]
        assert [s for s, _ in got["warmup/loss"]] == [0] and [s for s, _ in got["eval/warmup/accuracy"]] == [0]
        assert all(math.isfinite(v) for points in got.values() for _, v in points)

    check(train(cfg))
    # as if killed after the checkpoint of RL step 1: the resume redoes step 2 (index 1) and the final eval
    for name in ("step_2", "final"):
        shutil.rmtree(run_dir / "checkpoints" / name)
    (run_dir / "summary.json").unlink()
    summary = train(cfg, resume=True)
    assert summary["resumed_from"] == "step_1"
    check(summary)  # one point per step: the redone step and evaluation are not doubled
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_validate_refuses_a_tracker_whose_package_is_missing_before_any_folder_exists(tmp_path, monkeypatch):
    import importlib.util

    from credo.train.run import validate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = resolve_config("tiny", None, [("run.trackers", "wandb"), ("run.out_dir", str(tmp_path / "runs"))])
    with pytest.raises(CredoError, match=re.escape("run.trackers 'wandb' needs the wandb package: "
                                                   "pip install 'credo[wandb]'")):
        validate(cfg)
    assert not (tmp_path / "runs").exists()
    validate(resolve_config("tiny", None, [("run.trackers", "tensorboard")]))  # installed: accepted
