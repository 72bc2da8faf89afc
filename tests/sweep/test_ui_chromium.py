"""The runs table as a browser renders it: `raptor-study ui SWEEP` on a store holding a sweep and its saved view,
rendered by headless Chromium. Needs the `chromium` binary, so it is skipped where there is none and under CI
(CI=true); by hand: `apt-get install -y chromium`, then `pytest -m e2e tests/sweep/test_ui_chromium.py`. With
RAPTOR_UI_SCREENSHOT=PATH it also saves a 1600 x 1000 screenshot there (docs/ui_runs_table.png was taken from a
smoke sweep's store)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.scenario import free_port, serving
from study.contract import ACC_RATIO, PRIMARY_PREDICTOR
from study.sweep.space import load_sweep

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt-get install chromium); run by hand"),
    # CI runs the same tests on every machine: a browser a session once installed by hand does not add this one
    pytest.mark.skipif(bool(os.environ.get("CI")), reason="a browser check, run by hand (README 'The runs table')"),
]


def render(url: str, *extra: str) -> str:
    """The page's DOM after its scripts ran (Chromium's virtual time: up to 25 s of page time)."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1600,1000",
         "--virtual-time-budget=25000", *extra, url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    return proc.stdout


def test_ui_opens_the_runs_table_with_the_searched_params_and_metrics_and_prints_one_line(tmp_path):
    from study.sweep.synthetic import write_synthetic_sweep
    from study.sweep.view import save_runs_view

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = write_synthetic_sweep(uri, "smoke", sd_rates=(0.0, 0.3), ks=(2, 3), teacher_seeds=(0,), lambda_cls=(0.3,),
                                  n_failed=0, n_pruned=0, artifact_location=(tmp_path / "a").as_uri())  # fmt: skip
    client = MlflowClient(uri)
    save_runs_view(
        client,
        client.get_experiment_by_name(sweep.experiment).experiment_id,
        load_sweep(ROOT / "search_spaces" / "smoke.yaml"),
    )
    port = free_port()
    console = tmp_path / "console.txt"
    with console.open("w") as out:
        command = [sys.executable, "-m", "study", "ui", "smoke", "--out", str(tmp_path), "--port", str(port)]
        ui = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        assert serving(port, 150), console.read_text()[-2000:]
        url = re.search(r"http://\S+", console.read_text()).group(0)
        assert "workflowType=machine_learning" in url and "viewStateShareKey=raptor-study" in url
        dom = render(url, "--dump-dom")
        for header in ("teacher.sd_rate", "raptor.k", "distill.stage2.lambda_cls", ACC_RATIO, PRIMARY_PREDICTOR):
            assert f'data-testid="sort-header-{header}"' in dom, header  # a visible column header, without clicking
        assert "sd0.3-s0-k3" in dom  # the trials are listed, not folded under their parent
        if os.environ.get("RAPTOR_UI_SCREENSHOT"):
            render(url, f"--screenshot={os.environ['RAPTOR_UI_SCREENSHOT']}")
    finally:
        ui.send_signal(signal.SIGINT)
        code = ui.wait(timeout=60)
    assert code == 130
    lines = console.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("MLflow UI for"), lines  # no request lines, no warnings
    assert (tmp_path / "logs" / "mlflow-ui.log").is_file()  # the server's own output went there
