import json

import pytest

from study.cli import main, parse_overrides
from study.config import ConfigError


def error_line(capsys) -> str:
    out = capsys.readouterr().err.strip()
    assert len(out.splitlines()) == 1, out
    assert out.startswith("error: ")
    return out


def test_invalid_k_exits_2_with_one_line_naming_the_field(capsys, tmp_path):
    assert main(["trial", "--set", "raptor.k=99", "--out", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert line == "error: raptor.k: Input should be less than or equal to 64 (got 99)"
    assert not any(tmp_path.iterdir()), "nothing is written for an invalid config"
    # within the field's bounds but deeper than the (default, 8-block) teacher
    assert main(["trial", "--set", "raptor.k=9", "--out", str(tmp_path)]) == 2
    assert error_line(capsys) == "error: raptor.k: must be in [1, 8] (the teacher's depth), got 9"


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--set", "raptor.k"], "--set: expected KEY=VALUE, got 'raptor.k'"),
        (["--set", "=3"], "--set: expected KEY=VALUE"),
        (["--set", "teacher.nope=1"], "teacher.nope: unknown key"),
        (["--set", "teacher.sd_rate=1.5"], "teacher.sd_rate: Input should be less than 1"),
        (["--config", "/nonexistent/trial.yaml"], "no such config file"),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, tmp_path, argv, expected):
    assert main(["trial", *argv, "--out", str(tmp_path)]) == 2
    assert expected in error_line(capsys)


def test_unwritable_out_is_a_clear_error(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["trial", "--out", str(blocker / "runs")]) == 2
    line = error_line(capsys)
    assert line.startswith("error: --out: output folder") and "not writable" in line and str(blocker) in line


def test_parse_overrides_types_values_like_yaml():
    assert parse_overrides(
        ["teacher.sd_rate=0.3", "raptor.k=3", "distill.stage2.enabled=false", "name=a=b", "data.path=/x y"]
    ) == {"teacher.sd_rate": 0.3, "raptor.k": 3, "distill.stage2.enabled": False, "name": "a=b", "data.path": "/x y"}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_tiny_trial_via_main(capsys, tmp_path, tiny_overrides, prepared):
    sets = [
        arg
        for key, value in {**tiny_overrides, "name": "cli"}.items()
        for arg in ("--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}")
    ]
    assert main(["trial", *sets, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "r2.final" in out and "acc.ratio" in out
    result = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert result["config"]["name"] == "cli" and result["config"]["teacher"]["depth"] == 4
    assert result["teacher"]["key"] == prepared.teacher.key, "the CLI trial reuses the cached teacher"


@pytest.mark.parametrize(
    ("statuses", "exit_code"), [(["finished"], 0), (["finished", "failed"], 1), (["failed"], 1), ([], 1)]
)
def test_sweep_report_flag_writes_the_report_in_the_same_process(monkeypatch, capsys, tmp_path, statuses, exit_code):
    """`sweep --report`: after the sweep, the report of that sweep (its name after --set) goes to OUT/reports/NAME
    and to its MLflow run; with no finished trial it says so instead."""
    import pandas as pd

    import analysis.report
    import study.sweep.driver

    calls = {}

    def fake_sweep(spec, out_root, **kwargs):
        calls["sweep"] = kwargs["tracking_uri"]
        return pd.DataFrame({"status": statuses})

    def fake_report(experiments, uri, out_dir, log_to_mlflow=False):
        calls["report"] = (experiments, uri, out_dir, log_to_mlflow)
        return out_dir / "report.html"

    monkeypatch.setattr(study.sweep.driver, "run_sweep", fake_sweep)
    monkeypatch.setattr(analysis.report, "write_report", fake_report)
    out = tmp_path / "runs"
    code = main(["sweep", "search_spaces/smoke.yaml", "--out", str(out), "--report", "--set", "name=demo2"])
    shown = capsys.readouterr().out
    assert code == exit_code
    if "finished" in statuses:
        assert calls["report"] == (["demo2"], calls["sweep"], out / "reports" / "demo2", True)
        assert f"report: {out / 'reports' / 'demo2' / 'report.html'}" in shown
    else:
        assert "report" not in calls and "report: not written, no trial finished" in shown
