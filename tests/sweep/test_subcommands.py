"""Every subcommand answers bad input with one line on stderr and exit code 2, never a traceback;
conventions a Ray/MLflow user expects (MLFLOW_TRACKING_URI, --version, `ui` on an http URI, runs-table URL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.scenario import free_port, serving

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "search_spaces" / "smoke.yaml")


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, *expected: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err + proc.stdout, err
    assert err.startswith("error:") and all(e in err for e in expected), err


@pytest.mark.parametrize(
    "args, expected",
    [
        ((), ["the following arguments are required: command"]),
        (("frobnicate",), ["invalid choice: 'frobnicate'"]),
        (("trial", "--set", "raptor.k=99"), ["raptor.k"]),
        (("trial", "--bogus"), ["unrecognized arguments: --bogus"]),
        (("sweep",), ["spec"]),
        (("sweep", "/no/such/spec.yaml"), ["no such config file"]),
        (("sweep", SMOKE, "--set", "search.num_samples=0"), ["search.num_samples"]),
        (("resume", SMOKE, "--out", "{tmp}/empty"), ["resume: no sweep 'smoke' to resume"]),
        (("report", "nope", "--out", "{tmp}"), ["no MLflow experiment named 'nope'"]),
        (("report",), ["experiments"]),
        (("ui", "--port", "0", "--out", "{tmp}"), ["--port"]),
        (("ui", "--port", "many"), ["invalid int value: 'many'"]),
        (("ui", "nope", "--out", "{tmp}"), ["ui: no MLflow store"]),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path, args, expected):
    assert_one_line_exit_2(cli(*(a.replace("{tmp}", str(tmp_path)) for a in args)), *expected)


def test_report_on_an_existing_store_names_the_missing_experiment_and_the_known_ones(tmp_path):
    from study.sweep.synthetic import write_synthetic_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_synthetic_sweep(
        uri,
        "have",
        sd_rates=(0.0,),
        ks=(2,),
        teacher_seeds=(0,),
        lambda_cls=(0.3,),
        n_failed=0,
        n_pruned=0,
        artifact_location=(tmp_path / "a").as_uri(),
    )
    proc = cli("report", "nope", env={"MLFLOW_TRACKING_URI": uri})  # the env var, no flag
    assert_one_line_exit_2(proc, "no MLflow experiment named 'nope'", "known: have")


def test_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("raptor-study ")


def test_ui_on_an_http_uri_prints_it_instead_of_serving(tmp_path):
    proc = cli("ui", env={"MLFLOW_TRACKING_URI": "http://user:secret@mlflow.example:5000"})
    assert proc.returncode == 0, proc.stderr
    assert "http://***@mlflow.example:5000" in proc.stdout and "secret" not in proc.stdout + proc.stderr


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.e2e  # `ui` starts a real MLflow server
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ui_prints_the_runs_table_url_and_stops_its_server_on_a_signal(tmp_path, sig):
    from study.sweep.synthetic import write_synthetic_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_synthetic_sweep(
        uri,
        "seen",
        sd_rates=(0.0,),
        ks=(2,),
        teacher_seeds=(0,),
        lambda_cls=(0.3,),
        n_failed=0,
        n_pruned=0,
        artifact_location=(tmp_path / "a").as_uri(),
    )
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "study", "ui", "seen", "--out", str(tmp_path), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
    if not serving(port, 150):
        proc.kill()
        pytest.fail(f"ui did not serve: {log.read_text()[-2000:]}")
    text = log.read_text()
    assert f"http://127.0.0.1:{port}/#/experiments/" in text and "/runs" in text, text
    server_group = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()[0])
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    deadline = time.monotonic() + 30
    while group_alive(server_group) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not group_alive(server_group), "the MLflow server or one of its helpers kept running"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
