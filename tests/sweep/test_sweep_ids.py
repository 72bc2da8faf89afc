"""Sweep ids, spec hashes and collisions, run names, failure reasons: fast checks on a local SQLite store."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from study.config import ConfigError
from study.contract import ACC_RATIO, R2_FINAL, VAL_R2, trial_run_name
from study.sweep.runs import check_no_collision, create_parent_run, ensure_experiment, find_parent, mark_interrupted
from study.sweep.space import as_sweep_spec, load_sweep, spec_hash
from study.sweep.tracking import error_reason

SMOKE = Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml"


def test_spec_hash_ignores_the_description_and_sees_everything_else():
    spec = load_sweep(SMOKE)
    assert spec_hash(spec) == spec_hash(as_sweep_spec(SMOKE, {"description": "other words"}))
    assert spec_hash(spec) != spec_hash(as_sweep_spec(SMOKE, {"search.num_samples": 7}))
    assert as_sweep_spec(spec.model_dump(mode="json")) == spec  # dict, path and typed spec agree


def test_a_colliding_launch_is_refused_naming_both_hashes_and_resume_finds_its_parent(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = ensure_experiment(client, "smoke", tmp_path / "art")
    spec = load_sweep(SMOKE)
    first = create_parent_run(
        client,
        experiment_id,
        spec,
        sweep_id="aaa",
        spec_hash=spec_hash(spec),
        spec_text=SMOKE.read_text(),
        provenance={},
    )
    check_no_collision(client, experiment_id, spec, spec_hash(spec))  # the same spec again: allowed
    other = as_sweep_spec(SMOKE, {"search.num_samples": 7})
    with pytest.raises(ConfigError) as err:
        check_no_collision(client, experiment_id, other, spec_hash(other))
    assert spec_hash(spec) in str(err.value) and spec_hash(other) in str(err.value) and "--new" in str(err.value)
    second = create_parent_run(
        client, experiment_id, other, sweep_id="bbb", spec_hash=spec_hash(other), spec_text="", provenance={}
    )  # what --new does
    assert find_parent(client, experiment_id, "aaa") == first and find_parent(client, experiment_id, "bbb") == second
    note = client.get_run(first).data.tags["mlflow.note.content"]
    assert "Primary relation" in note and "name: smoke" in note
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    mark_interrupted(client, experiment_id, "aaa", first)
    assert client.get_run(first).info.status == "KILLED" and client.get_run(second).info.status == "RUNNING"


def test_run_names_are_short_and_sortable():
    params = {"teacher.sd_rate": 0.3, "teacher.seed": 1, "raptor.k": 2}
    assert trial_run_name(params, "53d73dbe", 7) == "sd0.3-s1-k2-0007"
    assert trial_run_name(params, "abc_00012") == "sd0.3-s1-k2-0012"


def test_a_failed_trial_is_tagged_with_its_reason_and_oom_is_preferred():
    error = RuntimeError(
        "TrainingFailedError: worker 0 failed\ntorch.OutOfMemoryError: CUDA out of memory. "
        "Tried to allocate 2.00 GiB\n(pid=123) see the log"
    )
    assert error_reason(SimpleNamespace(get_error=lambda: error)).startswith(
        "torch.OutOfMemoryError: CUDA out of memory"
    )
    assert error_reason(SimpleNamespace(get_error=lambda: ValueError("bad\nlast line"))) == "last line"


def test_a_second_launch_from_the_same_out_is_refused_while_the_first_runs(tmp_path):
    from study.sweep.driver import launch_lock
    from study.sweep.paths import SweepPaths

    paths = SweepPaths(tmp_path)
    first = launch_lock(paths, "smoke")
    try:
        with pytest.raises(ConfigError, match="'smoke' is already running from"):
            launch_lock(paths, "smoke")
        launch_lock(paths, "other").release()  # another sweep in the same folder is fine
    finally:
        first.release()
    launch_lock(paths, "smoke").release()  # free again once the first has ended


def test_the_callback_tags_a_failed_trial_with_its_reason_and_prints_one_line(tmp_path, capsys):
    from study.sweep.tracking import MlflowTrialCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "smoke", tmp_path / "art")
    spec = load_sweep(SMOKE)
    parent = create_parent_run(client, experiment_id, spec, sweep_id="s1", spec_hash="h", spec_text="", provenance={})
    callback = MlflowTrialCallback(uri, experiment_id, parent, spec, "s1")
    error = RuntimeError("worker died\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    trial = SimpleNamespace(trial_id="t_00001", config={"raptor.k": 2}, get_error=lambda: error)
    callback.on_trial_start(0, [trial], trial)
    callback.on_trial_error(0, [trial], trial)
    assert callback.flush(patience_s=60)
    (run,) = client.search_runs([experiment_id], "tags.`raptor.role` = 'trial'")
    assert run.info.status == "FAILED" and run.data.tags["raptor.status"] == "failed"
    assert run.data.tags["raptor.failure"].startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert run.data.tags["raptor.sweep_id"] == "s1" and run.info.run_name == "sd0-s0-k2-0001"
    printed = [line for line in capsys.readouterr().out.splitlines() if "t_00001 failed" in line]
    assert len(printed) == 1 and "out of memory" in printed[0]


def test_result_table_headers_are_short_unless_two_columns_share_a_last_part():
    from study.sweep.console import short_headers

    columns = ["trial_id", "status", "teacher.seed", "seed", "teacher.sd_rate", VAL_R2, R2_FINAL, ACC_RATIO]
    expected = ["trial_id", "status", "teacher.seed", "seed", "sd_rate", VAL_R2, R2_FINAL, ACC_RATIO]
    assert short_headers(columns) == expected


def test_the_result_table_is_printed_whole_outside_a_terminal_and_fits_a_terminal():
    import io

    import pandas as pd
    from rich.console import Console
    from rich.text import Text

    from study.sweep.console import print_whole, result_table

    trial_id = "179fc8e2_00001_1_anneal=0.2321,k=2,lambda_cls=0.3681,sd_rate=0.0000"
    table = pd.DataFrame(
        [
            {
                "trial_id": trial_id,
                "status": "finished",
                "teacher.sd_rate": 0.0,
                "k": 2,
                VAL_R2: 0.99712,
                R2_FINAL: 0.9972,
            }
        ]
    )
    log = io.StringIO()
    print_whole(result_table(table, "sweep smoke: 1 trials"), Console(file=log, width=80))  # a file: no terminal
    text = log.getvalue()
    assert trial_id in text and "finished" in text and "0.9971" in text and R2_FINAL in text
    assert max(len(line) for line in text.splitlines()) > 80  # wider than the default, not cut to it
    tty = io.StringIO()
    print_whole(result_table(table, "t"), Console(file=tty, width=80, force_terminal=True))
    assert max(len(line) for line in Text.from_ansi(tty.getvalue()).plain.splitlines()) <= 80


def test_a_resume_completes_the_runs_of_trials_that_ended_before_the_driver_was_killed(tmp_path, caplog):
    """Tune saved a trial as ended, but the killed driver never delivered its last MLflow writes: the resumed
    sweep's callback completes its run from the trial's result.json; a run delivered whole is left as it was, and
    one whose trial folder is gone too (nothing to complete it from) is left for the driver to mark orphaned."""
    import json
    import pickle
    import shutil

    from study.sweep.tracking import MlflowTrialCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "smoke", tmp_path / "art")
    spec = load_sweep(SMOKE)
    parent = create_parent_run(client, experiment_id, spec, sweep_id="s1", spec_hash="h", spec_text="", provenance={})
    history = [{"stage": s, "epoch": e, "loss": 1.0 / (e + 1), "val_r2": 0.9} for s in (1, 2) for e in (0, 1)]

    def trial(index: int) -> SimpleNamespace:
        out_dir = tmp_path / f"t{index}"
        out_dir.mkdir()
        result = {"metrics": {R2_FINAL: 0.9 + index / 100, ACC_RATIO: 0.8}, "history": history}
        (out_dir / "result.json").write_text(json.dumps(result))
        last = {R2_FINAL: 0.9, "out_dir": str(out_dir)}
        return SimpleNamespace(trial_id=f"t_0000{index}", config={"raptor.k": 2}, last_result=last, status="RUNNING")

    whole, partial, lost, gone = trials = [trial(1), trial(2), trial(3), trial(4)]
    first = MlflowTrialCallback(uri, experiment_id, parent, spec, "s1")  # the driver that is killed
    first.on_trial_start(0, trials, whole)
    for record in history:
        first.on_trial_result(0, trials, whole, record)
    first.on_trial_complete(0, trials, whole)
    first.on_trial_start(0, trials, partial)
    first.on_trial_result(0, trials, partial, history[0])  # its later writes never left the killed driver
    first.on_trial_start(0, trials, gone)
    assert first.flush(patience_s=60)
    shutil.rmtree(Path(gone.last_result["out_dir"]))
    (delivered,) = client.search_runs([experiment_id], f"tags.`raptor.trial_id` = '{whole.trial_id}'")

    resumed = pickle.loads(pickle.dumps(first))  # Tune restores its callbacks from the saved experiment
    for t in trials:
        t.status = "TERMINATED"
    resumed.on_experiment_end(trials)

    runs = {
        r.data.tags["raptor.trial_id"]: r for r in client.search_runs([experiment_id], "tags.`raptor.role` = 'trial'")
    }
    assert sorted(runs) == [t.trial_id for t in trials]
    assert runs[whole.trial_id].info.end_time == delivered.info.end_time  # not written again
    assert runs[gone.trial_id].info.status == "RUNNING" and R2_FINAL not in runs[gone.trial_id].data.metrics
    assert f"trial {gone.trial_id}: cannot complete its MLflow run" in caplog.text
    for t in (whole, partial, lost):
        run = runs[t.trial_id]
        assert run.info.status == "FINISHED" and run.data.tags["raptor.status"] == "finished", t.trial_id
        assert run.data.params["raptor.k"] == "2" and run.data.metrics[R2_FINAL] == 0.9 + int(t.trial_id[-1]) / 100
        for stage in (1, 2):  # every epoch once: the partial run kept its delivered epoch and got the rest
            steps = [m.step for m in client.get_metric_history(run.info.run_id, f"stage{stage}.loss")]
            assert sorted(steps) == [0, 1], (t.trial_id, stage, steps)
    assert runs[lost.trial_id].info.run_name.endswith("0003")  # named by its place among the sweep's trials
