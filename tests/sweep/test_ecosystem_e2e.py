"""End to end (loopback, tiny trials): Ctrl-C exits 130 and marks runs KILLED, resume continues; SIGTERM to the
driver stops it the same way (exit 143); a colliding
launch is refused; the Optuna study persists in a journal file; sweep ids, provenance and run names in MLflow."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from mlflow.tracking import MlflowClient
from test_sweep_e2e import cli, output, tiny_spec, trial_runs

from analysis.report import REPORT_ARTIFACT_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


def launch_until_a_trial_finished(spec, out, name: str):
    """`raptor-study sweep SPEC --out OUT`, returned (still running) once its first trial has ended FINISHED in
    MLflow. A trial's result.json comes first, and its run ends only when Tune reports the trial complete: a signal
    in between rightly leaves that run KILLED for resume, so the tests wait for the run itself."""
    proc = cli("sweep", str(spec), "--out", str(out))
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:  # the driver has created the store by then
        time.sleep(1)
        if list((out / "trials" / name).glob("*/result.json")):
            break
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r.info.status == "FINISHED" for r in trial_runs(client, name)):
            break
        time.sleep(0.5)
    assert proc.poll() is None, output(proc)[-3000:]
    return proc


def test_ctrl_c_then_resume_and_a_colliding_launch(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    spec = tiny_spec(tmp_path, "cc", num_samples=3, max_concurrent=1)
    out = tmp_path / "runs"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    proc = launch_until_a_trial_finished(spec, out, "cc")
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole foreground group
    log = output(proc, timeout=300)
    stop_s = time.monotonic() - t0
    assert proc.returncode == 130, log[-3000:]
    assert f"Continue with: raptor-study resume {spec} --out {out}" in log  # the real spec path
    assert "Tuner.restore" not in log  # Ray's own resume hint is not the one to follow
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cc")
    parent = client.search_runs([experiment.experiment_id], "tags.`raptor.role` = 'sweep'")
    assert len(parent) == 1 and parent[0].info.status == "KILLED"
    tags = parent[0].data.tags
    sweep_id = tags["raptor.sweep_id"]
    assert tags["raptor.spec_hash"] and tags["mlflow.note.content"].count("```yaml") == 1
    assert "Primary relation" in tags["mlflow.note.content"] and tags["raptor.version"]
    assert len(tags.get("mlflow.source.git.commit", "")) == 40 and tags["raptor.git_dirty"] in ("true", "false")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = trial_runs(client, "cc")
    assert all(r.data.tags["raptor.sweep_id"] == sweep_id for r in runs)
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"} and any(r.info.status == "FINISHED" for r in runs)

    # the same name, another spec (num_samples 4): refused on the shared tracking store, naming both hashes
    other = cli(
        "sweep", str(spec), "--out", str(tmp_path / "other"), "--tracking-uri", uri, "--set", "search.num_samples=4"
    )
    message = output(other, timeout=300).strip().splitlines()
    assert other.returncode == 2 and "spec hash" in message[-1] and tags["raptor.spec_hash"] in message[-1], message

    resumed = output(cli("resume", str(spec), "--out", str(out), "--report"), timeout=900)
    runs = trial_runs(client, "cc")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs), resumed[-3000:]
    assert len({r.data.tags["raptor.trial_id"] for r in runs}) == 3  # nothing duplicated
    assert client.get_run(parent[0].info.run_id).info.status == "FINISHED"
    assert all(r.data.tags["raptor.sweep_id"] == sweep_id for r in runs)
    assert all(r.info.run_name.startswith("sd") and r.info.run_name[-4:].isdigit() for r in runs)
    assert all(r.inputs.dataset_inputs for r in runs)
    # --report: the report written by the sweep's own process, and logged to the sweep's parent run
    assert f"report: {out / 'reports' / 'cc' / 'report.html'}" in resumed, resumed[-3000:]
    assert (out / "reports" / "cc" / "report.md").is_file()
    logged = [a.path for a in client.list_artifacts(parent[0].info.run_id)]
    assert REPORT_ARTIFACT_DIR in logged, logged
    journal = out / "ray" / "cc" / "optuna.journal"
    assert f"raptor-study dashboard cc --out {out}" in resumed
    study = optuna.load_study(study_name=f"cc-{sweep_id}", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(study.trials) >= 3  # the sampler's history spans the interrupt
    # Optuna and MLflow point at each other, across the interrupt too; the objective is named
    assert study.metric_names == ["val_r2"] and tags["raptor.optuna_study"] == f"cc-{sweep_id}"
    by_run = {t.user_attrs.get("mlflow_run_id"): t for t in study.trials}
    for run in runs:
        trial = by_run[run.info.run_id]
        assert run.data.tags["raptor.optuna_trial"] == str(trial.number)
        assert trial.user_attrs["mlflow_run_name"] == run.info.run_name
        assert run.data.tags["mlflow.source.name"] == "raptor-study sweep cc.yaml"  # the entry point, as launched
        assert any(key.startswith("system/") for key in run.data.metrics)  # system metrics on every trial run
    (tmp_path / "ecosystem_e2e.json").write_text(json.dumps({"ctrl_c_to_exit_s": stop_s}))
    print(f"Ctrl-C to exit: {stop_s:.1f} s")


def test_sigterm_to_the_driver_stops_the_sweep_gracefully_and_resume_finishes_it(tmp_path):
    """`kill PID` (or a batch scheduler's preemption notice) is a graceful stop, as Ctrl-C is: Tune saves its state,
    MLflow is flushed, unfinished runs end KILLED naming the signal, the exit code is 143; resume finishes."""
    spec = tiny_spec(tmp_path, "term", num_samples=3, max_concurrent=1)  # two left when the first has finished
    out = tmp_path / "runs"
    proc = launch_until_a_trial_finished(spec, out, "term")
    os.kill(proc.pid, signal.SIGTERM)  # the driver only, as `kill PID` does
    log = output(proc, timeout=300)
    assert proc.returncode == 143, log[-3000:]
    assert "SIGTERM" in log and "Continue with: raptor-study resume" in log, log[-3000:]
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("term").experiment_id], "tags.`raptor.role` = 'sweep'"
    )
    assert parent.info.status == "KILLED"
    runs = trial_runs(client, "term")
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"} and any(r.info.status == "FINISHED" for r in runs)
    assert all("SIGTERM" in r.data.tags["raptor.failure"] for r in runs if r.info.status == "KILLED")

    resumed = output(cli("resume", str(spec), "--out", str(out)), timeout=900)
    runs = trial_runs(client, "term")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs), resumed[-3000:]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
