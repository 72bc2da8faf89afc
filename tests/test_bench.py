"""bench/ is a package of scripts on the public API: every module imports (no sys.path edits, no
private names from study/analysis), and the GPU bench's quick CPU run writes the JSON it documents."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from pathlib import Path

import pytest
import torch

import bench
from bench.gpu.mfu import add_rates, block_flops_per_token, raptor_step_flops, teacher_forward_flops
from bench.gpu.models import QUICK_DIGITS, VIT_S, even_phases

BENCH = Path(bench.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(BENCH)], prefix="bench."))


def test_every_bench_script_is_a_module_of_the_package():
    scripts = {
        p.relative_to(BENCH.parent).with_suffix("").as_posix().replace("/", ".")
        for p in BENCH.rglob("*.py")
        if p.name != "__init__.py"
    }
    assert scripts <= set(MODULES)
    assert {"bench.gpu.__main__", "bench.trial_time", "bench.sd_sanity", "bench.faults"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_bench_module_imports(name):
    assert importlib.import_module(name).__name__ == name


@pytest.mark.parametrize("path", sorted(BENCH.rglob("*.py")), ids=lambda p: p.relative_to(BENCH).as_posix())
def test_bench_uses_public_api_without_sys_path_edits(path):
    tree = ast.parse(path.read_text())
    attributes = {ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not {a for a in attributes if a.startswith("sys.path")}, path
    product = ("study", "analysis")
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in product
        for alias in node.names
        if alias.name.startswith("_")
    ]
    private += [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)  # e.g. distill._COMPILED after `import`
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("study", "analysis", "distill", "activations")
        and node.attr.startswith("_")
    ]
    assert private == [], path


def test_gpu_bench_imports_no_orchestration():
    for path in (BENCH / "gpu").glob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = list(ast.walk(tree))
        roots = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
        roots |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
        assert not roots & {"ray", "mlflow", "optuna"}, path


def test_flop_accounting_by_hand():
    # ViT-S/16 at 224 px: D = 384, MLP 4x, T = 197: 2 * (4 + 8) * 384^2 + 4 * 197 * 384 per block and token
    assert VIT_S.tokens == 197
    assert block_flops_per_token(VIT_S) == 2 * 12 * 384**2 + 4 * 197 * 384
    assert raptor_step_flops(VIT_S, 256) == 3 * 256 * 197 * 12 * block_flops_per_token(VIT_S)
    patch_embed = 2 * 16**2 * 3 * 384 * 196
    assert teacher_forward_flops(VIT_S, head=False) == 12 * 197 * block_flops_per_token(VIT_S) + patch_embed
    assert teacher_forward_flops(VIT_S) - teacher_forward_flops(VIT_S, head=False) == 2 * 384 * 1000
    row = add_rates({"flops": 2e12, "ms": 4.0, "items": 8}, peak_tflops=1000.0)
    assert row["tflops"] == pytest.approx(500.0) and row["mfu"] == pytest.approx(0.5)
    assert row["items_per_s"] == pytest.approx(2000.0)
    assert even_phases(12, 2) == ((1, 6), (7, 12)) and even_phases(8, 3) == ((1, 3), (4, 5), (6, 8))


def test_gpu_bench_quick_cpu_run_writes_the_documented_json(tmp_path):
    from bench.gpu.__main__ import main

    assert (
        main(
            [
                "--device",
                "cpu",
                "--quick",
                "--sections",
                "digits,cache",
                "--warmup",
                "1",
                "--iters",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert set(doc) == {
        "info",
        "rows",
        "cases",
        "cache_sizing",
        "gpu_free_gib_at_start",
        "host_ram_gib",
        "speedups",
        "elapsed_s",
    }
    assert doc["info"]["device_type"] == "cpu" and doc["info"]["bf16_peak_tflops"] is None
    assert doc["info"]["torch"] == torch.__version__
    workloads = [(r["workload"], r["variant"]) for r in doc["rows"]]  # a failed measurement leaves its row out
    expected = [
        (w, v)
        for v in ("fast", "baseline fp32 eager")
        for w in ("teacher train", "extract (device)", "stage-1 step", "stage-2 step")
    ]
    assert workloads == expected + [("extract->cache fp16", "fast"), ("extract->cache fp32", "fast")]
    for r in doc["rows"]:
        assert r["case"] in ("vit_quick", "digits_quick")
        assert r["ms"] > 0 and r["flops"] > 0 and r["items_per_s"] > 0 and r["tflops"] > 0 and r["mfu"] is None
    stage2 = next(r for r in doc["rows"] if r["workload"] == "stage-2 step" and r["variant"] == "fast")
    assert stage2["flops"] == raptor_step_flops(QUICK_DIGITS, QUICK_DIGITS.raptor_batch)
    assert stage2["loss_rel_err_vs_fp32"] < 1e-4  # CPU: fp32 both ways, only the attention kernel differs
    assert {(s["case"], s["workload"]) for s in doc["speedups"]} == {("digits_quick", w) for w, _ in expected[:4]}
    assert {(s["case"], s["dtype"]) for s in doc["cache_sizing"]} == {
        (c, d) for c in ("vit_quick", "digits_quick") for d in ("float32", "float16")
    }
    assert (tmp_path / "gpu_bench.md").read_text().startswith(f"# gpu_bench: {doc['info']['device']}")


def test_sweep_throughput_grid_gives_the_sweep_and_the_loop_the_same_trials():
    from bench.sweep_throughput import grid_points, trial_space

    assert trial_space(4, 0, 1000) == {"seed": [0, 1, 2, 3]}
    space = trial_space(6, 2, 2000)
    assert space == {"teacher.seed": [2000, 2001], "seed": [0, 1, 2]}
    points = grid_points(space)
    assert len(points) == 6 and len({tuple(p.items()) for p in points}) == 6
    assert {p["teacher.seed"] for p in points} == {2000, 2001}
    assert sum(p["teacher.seed"] == 2000 for p in points) == 3  # each teacher shared by trials / teachers


def test_sweep_throughput_stage_split_from_a_result():
    from bench.sweep_throughput import compile_estimate, trial_stages

    history = [
        {"stage": "stage1", "seconds": 10.0},
        {"stage": "stage1", "seconds": 2.0},
        {"stage": "stage1", "seconds": 3.0},
        {"stage": "stage2", "seconds": 4.0},
    ]
    assert compile_estimate(history, compiled=False) == 0.0
    assert compile_estimate(history, compiled=True) == pytest.approx(7.5)  # 10 - median(2, 3); one-epoch stage: 0
    timings = {
        "teacher_and_states_s": 1.0,
        "similarity_s": 2.0,
        "distill_s": 20.0,
        "checkpoint_s": 0.5,
        "evaluate_s": 3.0,
        "dynamics_s": 1.25,
        "write_s": 0.75,
    }
    stages = trial_stages({"timings": timings, "history": history}, compiled=True)
    assert stages["compile (first-epoch excess)"] == pytest.approx(7.5)
    assert stages["epochs (train + val)"] == pytest.approx(19.0 - 7.5)
    assert stages["distill: other"] == pytest.approx(20.0 - 19.0 - 0.5)
    assert stages["evaluate (fidelity, probe)"] == pytest.approx(1.75) and stages["dynamics"] == 1.25


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--trials", "0"], "--trials"),
        (["--trials", "4", "--teachers", "3"], "--teachers"),
        (["--device", "cpu", "--mps"], "--mps"),
        (["--trials", "6", "--teachers", "2", "--loop-trials", "2"], "--loop-trials"),  # 3 trials per teacher
        (["--trials", "4", "--loop-trials", "5"], "--loop-trials"),
    ],
)
def test_sweep_throughput_rejects_bad_counts_before_any_work(argv, field, tmp_path, capsys):
    from bench.sweep_throughput import main

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "work")])
    assert exit_info.value.code == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


SHARED = {"bench", "bench.common", "bench.scenario"}
"""The modules a bench script may import from bench/ (bench.gpu's parts import each other inside bench/gpu)."""


@pytest.mark.parametrize("path", sorted(BENCH.rglob("*.py")), ids=lambda p: p.relative_to(BENCH).as_posix())
def test_bench_scripts_share_helpers_only_through_bench_common_and_never_import_tests(path):
    tree = ast.parse(path.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m.split(".")[0] == "tests"}, path
    inside_gpu = path.parent.name == "gpu"
    others = {m for m in imported if m.split(".")[0] == "bench" and m not in SHARED}
    assert not {m for m in others if not (inside_gpu and m.startswith("bench.gpu"))}, path


def test_bench_readme_lists_every_script_with_its_command():
    readme = (BENCH / "README.md").read_text()
    scripts = {p.stem for p in BENCH.glob("*.py") if p.stem not in ("__init__", "common", "scenario")}
    assert {s for s in scripts if f"python -m bench.{s}" not in readme} == set()
    assert "python -m bench.gpu" in readme
    assert {p.name for p in BENCH.glob("*.sh") if f"bench/{p.name}" not in readme} == set()


def test_shrink_results_makes_a_smaller_palette_png_once(tmp_path):
    from PIL import Image

    from bench.shrink_results import PALETTE, shrink_png

    rgb = torch.rand(3, 200, 300, generator=torch.Generator().manual_seed(0))  # full colour: a poor PNG
    pixels = (torch.cat([rgb, torch.ones(1, 200, 300)]) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    path = tmp_path / "figure.png"
    Image.fromarray(pixels, "RGBA").save(path)
    before = path.stat().st_size
    assert shrink_png(path) == before - path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.mode == "P" and len(image.getcolors()) <= PALETTE and image.size == (300, 200)
    assert shrink_png(path) == 0  # idempotent: a second run leaves the file alone


def test_shrink_results_rounds_table_floats_to_float32_precision_once(tmp_path):
    from bench.shrink_results import round_floats

    path = tmp_path / "trials.csv"
    path.write_text('run,lr,r2,layers\nabc123,1e-05,0.12345678912345678,"[0.98765432109876, -1.5, 12.000000000001]"\n')
    assert round_floats(path) > 0
    assert path.read_text() == 'run,lr,r2,layers\nabc123,1e-05,0.1234568,"[0.9876543, -1.5, 12]"\n'
    assert round_floats(path) == 0  # idempotent
