"""What a user sees in the first minutes, without clicking: the runs table `ui` opens (a saved view with the
searched params and primary metrics), Source and run links, Optuna <-> MLflow, one meaning of --out, a quiet
console, `sweep --dry-run` and system metrics on every run. Fast checks on a local SQLite store; the Chromium
check of the rendered table is in test_ui_chromium.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from study.cli import main
from study.contract import (
    ACC_RATIO,
    OPTUNA_RUN_ID_ATTR,
    OPTUNA_RUN_NAME_ATTR,
    OPTUNA_TRIAL_TAG,
    R2_POOLED_FINAL,
    RUNS_VIEW_KEY,
    SHARED_VIEW_TAG_PREFIX,
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    VAL_R2,
)
from study.sweep.space import as_sweep_spec, load_sweep

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
FASHION = ROOT / "search_spaces" / "fashion_sd_study.yaml"


# ----------------------------------------------------------------------------- 1. the runs table
def test_the_saved_view_shows_the_searched_params_and_primary_metrics_sorted_by_the_objective(tmp_path):
    from study.sweep.browse import runs_table_url
    from study.sweep.runs import ensure_experiment
    from study.sweep.view import column, runs_view, save_runs_view

    spec = load_sweep(SMOKE)
    view = runs_view(spec)
    expected = [column("params", key) for key in spec.space] + [
        column("metrics", key) for key in (VAL_R2, R2_POOLED_FINAL, ACC_RATIO)
    ]
    assert set(expected) <= set(view["selectedColumns"]) and view["columnOrder"] == view["selectedColumns"]
    assert view["selectedColumns"][: len(spec.space)] == expected[: len(spec.space)]  # the knobs first
    assert view["orderByKey"] == column("metrics", VAL_R2) and view["orderByAsc"] is False

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, spec.name, tmp_path / "artifacts")
    url = runs_table_url("http://127.0.0.1:5000", uri, spec.name)
    assert url == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    save_runs_view(client, experiment_id, spec)
    saved = client.get_experiment(experiment_id).tags[SHARED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY]
    assert json.loads(saved) == view
    assert runs_table_url("http://127.0.0.1:5000", uri, spec.name) == f"{url}&viewStateShareKey={RUNS_VIEW_KEY}"


# ----------------------------------------------------------------------------- 2. Source
def test_trial_runs_carry_the_command_as_their_source_and_their_optuna_trial(tmp_path):
    from study.sweep.record import TrialRecord, log_trial

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("s", artifact_location=(tmp_path / "a").as_uri())
    record = TrialRecord(
        sweep="s",
        sweep_id="id",
        trial_id="t_00001",
        parent_run_id="",
        run_name="t",
        teacher_key="k",
        params={"raptor.k": 2},
        status="finished",
        source="raptor-study sweep search_spaces/smoke.yaml",
        optuna_trial=3,
    )
    tags = client.get_run(log_trial(client, experiment_id, record)).data.tags
    assert tags[SOURCE_NAME_TAG] == "raptor-study sweep search_spaces/smoke.yaml" and tags[SOURCE_TYPE_TAG] == "LOCAL"
    assert tags[OPTUNA_TRIAL_TAG] == "3"


def test_the_sweep_source_is_its_entry_point_and_the_parent_keeps_the_command_line(monkeypatch):
    from study.sweep.driver import command_line, entry_point

    monkeypatch.setattr(sys, "argv", ["/venv/bin/raptor-study", "sweep", "search_spaces/smoke.yaml"])
    assert command_line() == "raptor-study sweep search_spaces/smoke.yaml"
    assert entry_point("search_spaces/smoke.yaml", resume=False) == "raptor-study sweep smoke.yaml"  # no '/'
    assert entry_point(SMOKE, resume=True) == "raptor-study resume smoke.yaml"
    monkeypatch.setattr(sys, "argv", ["/home/me/explore.py"])
    assert entry_point({"name": "x"}, resume=False) == "explore.py (study.run_sweep)"


# ----------------------------------------------------------------------------- 4. Optuna <-> MLflow
def test_optuna_trials_name_their_mlflow_run_and_the_study_names_its_objective(tmp_path):
    import optuna
    from ray import tune

    from study.sweep.optuna_link import LinkedOptunaSearch, OptunaLink, open_storage

    journal = tmp_path / "optuna.journal"
    searcher = LinkedOptunaSearch(storage=open_storage(None, journal), study_name="s-1")
    assert searcher.set_search_properties(VAL_R2, "max", {"raptor.k": tune.choice([2, 3])})
    searcher.suggest("tune_a")
    searcher.suggest("tune_b")
    link = OptunaLink("s-1", None, journal)
    link = type(link).__new__(type(link))  # as Tune restores it with the callback: pickled state only
    link.__setstate__(OptunaLink("s-1", None, journal).__getstate__())
    assert link.link("tune_b", "run-b", "sd0-s0-k2-0002") == 1
    assert link.link("nope", "run-x", "x") is None
    study = optuna.load_study(study_name="s-1", storage=open_storage(None, journal))
    assert study.metric_names == [VAL_R2]
    by_number = {t.number: t.user_attrs for t in study.trials}
    assert by_number[1][OPTUNA_RUN_ID_ATTR] == "run-b" and by_number[1][OPTUNA_RUN_NAME_ATTR] == "sd0-s0-k2-0002"
    assert OPTUNA_RUN_ID_ATTR not in by_number[0]


def launched(root: Path, sweep: str, sampler: str, journal: bool = True) -> None:
    folder = root / "ray" / sweep
    folder.mkdir(parents=True)
    (folder / "sweep_spec.json").write_text(json.dumps({"name": sweep, "search": {"sampler": sampler}}))
    if journal:
        (folder / "optuna.journal").write_text("")


def test_dashboard_without_the_extra_prints_how_to_get_it(tmp_path, capsys, monkeypatch):
    import study.sweep.browse as browse

    launched(tmp_path, "smoke", "tpe")
    monkeypatch.setattr(browse.importlib.util, "find_spec", lambda name: None)
    assert main(["dashboard", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip() == "optuna-dashboard is not installed: pip install -e .[dashboard]"


def test_dashboard_serves_the_sweeps_journal(tmp_path, monkeypatch):
    import study.sweep.browse as browse

    launched(tmp_path, "smoke", "tpe")
    launched(tmp_path, "grid", "grid", journal=False)
    seen = {}
    monkeypatch.setattr(browse.importlib.util, "find_spec", lambda name: SimpleNamespace(name=name))
    monkeypatch.setattr(browse, "serve", lambda command, url, *a, **k: seen.update(command=command, url=url) or 0)
    assert main(["dashboard", "--out", str(tmp_path), "--port", "8099"]) == 0  # the one sweep with a study
    assert seen["command"][1:] == [str(tmp_path / "ray" / "smoke" / "optuna.journal"), "--host", "127.0.0.1",
                                   "--port", "8099"]  # fmt: skip
    assert seen["url"] == "http://127.0.0.1:8099/"
    assert main(["dashboard", "grid", "--out", str(tmp_path)]) == 2  # a grid search has no Optuna study


# ----------------------------------------------------------------------------- 5. one meaning of --out
def report_args(*argv: str):
    from study.cli import build_parser

    return build_parser().parse_args(["report", "smoke", *argv])


def test_report_out_is_the_runs_root_and_the_old_forms_still_work_with_one_notice(tmp_path, monkeypatch, capsys):
    from study.cli import report_folders

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mlflow.db").write_text("")
    assert report_folders(report_args("--out", "elsewhere")) == (Path("elsewhere"), None)
    assert report_folders(report_args("--out", "elsewhere", "--report-dir", "r")) == (Path("elsewhere"), Path("r"))
    assert capsys.readouterr().err == ""
    assert report_folders(report_args("--runs", "elsewhere", "--out", "r")) == (Path("elsewhere"), Path("r"))
    assert "deprecated" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mlflow.db").write_text("")
    assert report_folders(report_args("--out", "reports/smoke")) == (Path("runs"), Path("reports/smoke"))
    notice = capsys.readouterr().err.strip()
    assert len(notice.splitlines()) == 1 and "--report-dir" in notice


def test_every_subcommand_takes_the_runs_root_as_out():
    from study.cli import build_parser

    parser = build_parser()
    for argv in (["sweep", "s.yaml"], ["resume", "s.yaml"], ["ui"], ["report", "x"], ["dashboard"]):
        assert parser.parse_args([*argv, "--out", "/r"]).out == "/r"


# ----------------------------------------------------------------------------- 6. quiet by default
def test_ui_keeps_the_servers_output_out_of_the_console_unless_verbose(tmp_path, monkeypatch):
    import study.sweep.browse as browse

    calls = []
    monkeypatch.setattr(browse, "serve", lambda command, url, what, log_file, verbose, env=None: calls.append(
        (command, log_file, verbose, env)) or 0)  # fmt: skip
    monkeypatch.setattr(browse, "runs_table_url", lambda base, uri, experiment: base)
    assert main(["ui", "--out", str(tmp_path)]) == 0
    assert main(["ui", "--out", str(tmp_path), "-v"]) == 0
    (quiet, log_file, verbose, env), (loud, _, loud_verbose, _) = calls
    assert not verbose and loud_verbose and log_file == tmp_path / "logs" / "mlflow-ui.log"
    assert "--no-access-log --log-level warning" in quiet and "--no-access-log --log-level warning" not in loud
    assert env["PYTHONWARNINGS"] == "ignore::DeprecationWarning" and env["MLFLOW_LOGGING_LEVEL"] == "WARNING"


def test_rays_resume_hint_is_dropped_and_ours_names_the_spec(caplog):
    from study.sweep.console import RAY_RESUME_HINT_LOGGER, drop_ray_resume_hint, resume_command

    drop_ray_resume_hint()
    drop_ray_resume_hint()  # once, however often a process launches sweeps
    ray_log = logging.getLogger(RAY_RESUME_HINT_LOGGER)
    with caplog.at_level(logging.WARNING, logger=RAY_RESUME_HINT_LOGGER):
        ray_log.warning('Experiment has been interrupted.\nResume experiment with: Tuner.restore(path="x")')
        ray_log.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]
    assert len(ray_log.filters) == 1
    assert resume_command("search_spaces/smoke.yaml", {"search.num_samples": 4}, Path("/r")) == (
        "raptor-study resume search_spaces/smoke.yaml --set search.num_samples=4 --out /r"
    )
    assert "resume=True" in resume_command({"name": "x"}, None, Path("/r"))


# ----------------------------------------------------------------------------- 7. --dry-run
def test_dry_run_prints_the_plan_and_starts_nothing():
    code = (
        "import sys; from study.cli import main; rc = main(['sweep', sys.argv[1], '--dry-run']); "
        "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules, 'imported Ray or MLflow'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(FASHION)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "sweep fashion_sd_study: 105 trials, objective val_r2 (max)"
    assert "grid over teacher.sd_rate (7) x teacher.seed (5) x raptor.k (3)" in lines[1]
    assert lines[2].startswith("teachers to train: 35,")
    assert lines[3].startswith("per trial: 1 CPU, 0.06 GPU")
    assert lines[4].startswith("concurrency: ")


def test_plan_counts_teachers_and_concurrency():
    from study.sweep.plan import Plan, teacher_count, trial_count

    smoke = load_sweep(SMOKE)
    assert trial_count(smoke) == 6 and teacher_count(smoke) == (2, "as the sampler draws")
    assert Plan(smoke, cpus=2, gpus=0).at_once() == 2 and Plan(smoke, cpus=1, gpus=0).at_once() == 1
    fashion = load_sweep(FASHION)
    assert Plan(fashion, cpus=16, gpus=1).at_once() == 16 and Plan(fashion, cpus=64, gpus=0).at_once() == 0
    drawn = as_sweep_spec(SMOKE, {"space.teacher.sd_rate": {"uniform": [0.0, 0.5]}})
    assert teacher_count(drawn) == (6, "teacher.sd_rate drawn per trial")


# ----------------------------------------------------------------------------- 8. system metrics
def test_a_run_shorter_than_the_sampling_interval_still_gets_system_metrics(tmp_path, monkeypatch):
    import ray  # noqa: F401 - Ray ships psutil (a dependency of this package too)

    from study.sweep.runs import start_system_metrics, stop_system_metrics

    monkeypatch.setenv("RAPTOR_SYSTEM_METRICS_S", "600")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("m", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    monitor = start_system_metrics(run_id, uri)
    assert monitor is not None
    time.sleep(0.5)
    stop_system_metrics(monitor)
    metrics = client.get_run(run_id).data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in metrics), metrics


def test_ui_without_a_sweep_name_opens_the_stores_only_sweep(tmp_path):
    from study.sweep.browse import runs_table_url
    from study.sweep.runs import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = "http://127.0.0.1:5000"
    assert runs_table_url(base, uri, None) == f"{base}/#/experiments?workflowType=machine_learning"  # no store yet
    experiment_id = ensure_experiment(MlflowClient(uri), "only", tmp_path / "a")
    assert runs_table_url(base, uri, None) == f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    ensure_experiment(MlflowClient(uri), "second", tmp_path / "a")
    assert runs_table_url(base, uri, None) == f"{base}/#/experiments?workflowType=machine_learning"


def test_the_python_api_report_takes_the_runs_root_as_out(tmp_path, monkeypatch):
    import analysis.report
    from study import report

    calls = []
    monkeypatch.setattr(analysis.report, "write_report", lambda names, uri, out_dir, log_to_mlflow: calls.append(
        (names, uri, out_dir)) or out_dir / "report.html")  # fmt: skip
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report("smoke", out=tmp_path)
    report("smoke", out=tmp_path, report_dir=tmp_path / "here")
    with pytest.warns(DeprecationWarning, match="report_dir"):
        report("smoke", runs=tmp_path, out=tmp_path / "old")  # the old form: `out` was the report folder
    store = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert calls == [
        (["smoke"], store, tmp_path / "reports" / "smoke"),
        (["smoke"], store, tmp_path / "here"),
        (["smoke"], store, tmp_path / "old"),
    ]
