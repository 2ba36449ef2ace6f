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
