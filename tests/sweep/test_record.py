import math

from mlflow.tracking import MlflowClient

from study.contract import emergence_metric
from study.sweep.record import log_result, result_values

EMERGENCE = [
    {"epoch": 0, "val_acc": 0.1, "mean_sim": 0.99, "k2.within_sim": 0.995, "k4.within_sim": math.nan},
    {"epoch": 2, "val_acc": 0.7, "mean_sim": 0.80, "k2.within_sim": 0.900, "k4.within_sim": math.nan},
]
RESULT = {"metrics": {"r2.final": 0.5}, "teacher": {"key": "abc", "emergence": EMERGENCE}}


def test_teacher_emergence_becomes_step_metrics_at_the_epochs_done():
    values = result_values(RESULT)
    steps = {(name, step): value for name, value, step in values}
    assert steps[(emergence_metric("val_acc"), 0)] == 0.1 and steps[(emergence_metric("val_acc"), 2)] == 0.7
    assert steps[(emergence_metric("k2.within_sim"), 2)] == 0.9
    assert not any(name == emergence_metric("k4.within_sim") for name, _, _ in values), "NaN snapshots are skipped"
    assert not any(name == emergence_metric("epoch") for name, _, _ in values)


def test_the_emergence_curves_read_back_from_mlflow(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "a"))).info.run_id
    log_result(client, run_id, RESULT)
    history = client.get_metric_history(run_id, emergence_metric("mean_sim"))
    assert sorted((m.step, m.value) for m in history) == [(0, 0.99), (2, 0.8)]
