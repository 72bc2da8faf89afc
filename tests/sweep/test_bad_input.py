"""Bad sweep input: one clear line naming the field, exit code 2, before any work, nothing lost."""

import pytest
import yaml

from study.cli import main

GOOD = {"name": "bad", "base": {"teacher": {"depth": 4}}, "space": {"raptor.k": {"choice": [2, 3]}}}


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda t: t["base"].update(data={"name": "cifar10", "path": "/no/such/cifar"}), "data.path"),
        (lambda t: t["base"].update(data={"name": "mnist"}), "data.name"),
        (lambda t: t["space"].update({"raptor.k": {"choice": [2, 9]}}), "raptor.k"),
        (lambda t: t["space"].update({"teacher.sd_rate": {"uniform": [0.0, 1.0]}}), "teacher.sd_rate"),
        (
            lambda t: t["space"].update({"distill.stage1.lambda_patch": {"uniform": [-0.1, 0.5]}}),
            "distill.stage1.lambda_patch",
        ),
        (lambda t: t["base"]["teacher"].update(width="wide"), "teacher.width"),
        (lambda t: t.update(searcher="tpe"), "searcher: unknown key"),
    ],
)
def test_bad_sweep_input_is_one_line_before_any_work(tmp_path, capsys, mutate, field):
    tree = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(tree)
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(tree))
    out = tmp_path / "runs"
    out.mkdir()
    earlier = out / "earlier-results.json"
    earlier.write_text('{"kept": true}')
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith("error:") and field in printed and len(printed.splitlines()) == 1, printed
    assert earlier.read_text() == '{"kept": true}'
    assert sorted(p.name for p in out.iterdir()) == ["earlier-results.json"]  # no Ray state, no store: no work


def test_malformed_yaml_and_unwritable_out(tmp_path, capsys):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\nspace: {raptor.k: [\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "runs")]) == 2
    assert "malformed YAML" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    assert main(["sweep", str(good), "--out", str(blocker / "runs")]) == 2
    assert "--out" in capsys.readouterr().err
