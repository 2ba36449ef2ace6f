"""A run whose stderr is a file (no TTY) logs plain progress lines, not tqdm's carriage-return redraws."""

import io
import subprocess
import sys

from credo.train.logging import LineProgress


def test_line_progress_prints_every_few_steps_and_at_the_end():
    out = io.StringIO()
    bar = LineProgress(25, "RL", stream=out)
    for _ in range(25):
        bar.update(1)
        bar.set_postfix(reward="0.50")
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"RL {n}/25" for n in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20,
                                                                               22, 24, 25)]
    assert all(line.endswith("reward=0.50") for line in lines) and "\r" not in out.getvalue()


def test_a_run_logged_to_a_file_has_no_carriage_returns(tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "wb") as f:
        proc = subprocess.run([sys.executable, "-m", "credo", "train", "--preset", "tiny", "--run.out_dir",
                               str(tmp_path), "--run.name", "r", "--rl.steps", "3", "--model.threads", "1",
                               "--run.eval_base", "false", "--task.eval_size", "4"],
                              stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_bytes().decode()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text
    assert "RL 3/3" in text and "warm-up 2/2" in text


def test_job_clock_eta_by_hand():
    from credo.train.logging import JobClock

    clock = JobClock({"warmup": 4, "rl": 10, "eval": 3})
    clock.done("eval", 6.0)  # the base evaluation
    clock.done("warmup", 2.0)
    clock.done("warmup", 4.0)
    assert clock.eta() is None and clock.text() == "?"  # RL steps are left and untimed
    clock.done("rl", 5.0)
    # 2 warm-up steps x 3 s + 9 RL steps x 5 s + 2 evaluations x 6 s
    assert clock.eta() == 2 * 3.0 + 9 * 5.0 + 2 * 6.0
    assert clock.text() == "1m03s"
    done = JobClock({"warmup": 0, "rl": 1, "eval": 0})
    done.done("rl", 3600.0)
    assert done.eta() == 0.0 and done.text() == "0m00s"
    long = JobClock({"rl": 3})
    long.done("rl", 1830.0)
    assert long.text() == "1h01m"  # 2 x 1830 s = 3660 s
