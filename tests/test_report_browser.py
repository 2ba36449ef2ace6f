"""The HTML report in a real browser: headless Chromium (Debian's chromium + chromium-driver, installed
by `bash scripts/setup.sh --test`) opens report.html and every plot must have decoded to an image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from credo.report.render import write_report
from credo.report.runs import RunRecord

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _runs(arm: str, finals: list[float]) -> list[RunRecord]:
    out = []
    for seed, final in enumerate(finals):
        rows = [{"phase": "eval", "stage": "warmup", "accuracy": 0.5}]
        rows += [{"phase": "rl", "step": i, "reward_mean": 0.1 * i + 0.02 * seed, "entropy": 1.0 - 0.05 * i,
                  "response_length": 20.0 + i, "approx_kl": 0.001 * i, "clip_fraction": 0.01, "step_time": 1.5}
                 for i in range(8)]
        rows += [{"phase": "eval", "stage": "rl_step", "step": 4, "accuracy": (0.5 + final) / 2},
                 {"phase": "eval", "stage": "rl", "accuracy": final}]
        out.append(RunRecord(Path("runs") / f"{arm}-s{seed}", arm, seed, {"rl": {"steps": 8}}, rows, {}, "finished"))
    return out


def test_every_plot_of_the_html_report_renders_in_headless_chromium(tmp_path):
    if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
        pytest.fail(f"headless Chromium is not installed ({CHROMIUM}, {DRIVER}): run `bash scripts/setup.sh --test`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    arms = {"grpo": _runs("grpo", [0.7, 0.75, 0.8]), "dapo": _runs("dapo", [0.6, 0.62, 0.58])}
    paths = write_report(tmp_path / "report", arms, title="browser test", window=1)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # (a given driver: nothing downloaded)
    try:
        driver.get(paths["html"].resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        cells = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')[0].rows).map(r => r.cells[0].innerText)")
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
    assert [alt for alt, *_ in images] == ["learning curves against RL step", "learning curves against wall time",
                                            "final held-out accuracy per arm"]
    for alt, complete, width, height in images:
        assert complete and width > 300 and height > 200, (alt, width, height)  # decoded, not a broken icon
    assert cells == ["arm", "grpo", "dapo"]  # the final table, best arm first as given
    assert (tmp_path / "report.png").stat().st_size > 10_000
