"""Replication rows for the paper's own measurements (docs/science.md §7): max-cut vs random partitions, per-SD
Raptor R^2, accuracy through the teacher's head vs SD, layer replacement, training stages, the k-table and the
ablation table. Each row: the paper's number, ours (final layer and mean over layers where the row is a fidelity)
with a teacher-level CI and n_teachers, and a verdict. A row whose metrics a store lacks is left out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.inference import MIN_TEACHERS, Interval, cluster_mean, mean_ci_teachers
from analysis.paper import AGREES, COLUMNS, DIFFERS, NOT_TESTABLE, PAPER_ACC_RATIO, PAPER_RAPTOR_R2
from analysis.sections import ci_text
from analysis.sweep import over_layers
from study.contract import (
    ABLATION_ROWS,
    ACC_FINETUNED_RATIO,
    ACC_HEAD,
    ACC_HEAD_RATIO,
    ACC_HEAD_TEACHER,
    ARM_PARAM,
    K_PARAM,
    PARTITION_METHOD_PARAM,
    PRIMARY_PREDICTOR,
    R2_KINDS,
    R2_POOLED_FINAL,
    REPLACE_IMAGES,
    REPLACE_NS,
    SD_PARAM,
    TEACHER_KEY_PARAM,
    TEACHER_SEED_PARAM,
    TEACHER_SNAPSHOT_PARAM,
    TEACHER_TEST_ACC,
    r2_metric,
    replace_metric,
)

MIN_REPLACE_IMAGES = 2000
"""Fewest test images for a layer-replacement accuracy the verdict accepts (standard error under 1 point)."""
PAPER_TEACHER_ACC = 84.5
"""ViT-B/14's own ImageNet accuracy in the paper: the denominator of its ablation and k-table ratios."""
ABLATION = (
    ("teacher forcing only", "tf_only", ACC_HEAD_RATIO, 3.9),
    ("+ autoregressive loss, annealed teacher forcing", "ar_anneal", ACC_HEAD_RATIO, 72.7),
    ("+ depth scaling", "depth_scaling", ACC_HEAD_RATIO, 75.2),
    ("+ cls weighting", "cls_weighting", ACC_HEAD_RATIO, 76.7),
    ("+ stage 2", "stage2", ACC_HEAD_RATIO, 82.4),
    ("+ fine-tuned probe", "stage2", ACC_FINETUNED_RATIO, 83.0),
)
"""The paper's ablation rows (k = 3, ImageNet accuracy in %): (name, the `ABLATION_ROWS` entry whose params select our
trials, our metric, the paper's accuracy). A switch param absent from a store counts as on (its default then)."""
OFF = frozenset({"false", "0", "off", "none", "uniform", "fixed"})


def paper_measurement_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """All rows of this module that the trials can fill (`COLUMNS` of `analysis.paper`)."""
    rows = [
        *maxcut_rows(trials),
        *raptor_r2_rows(trials),
        *head_vs_sd_rows(trials),
        *replacement_rows(trials),
        *stage_rows(trials),
        *ktable_rows(trials),
        *ablation_rows(trials),
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def mean_cell(values: pd.Series, units: pd.Series) -> tuple[str, dict]:
    """'0.912 [0.905, 0.919]' (mean of teacher means, t-interval) and the `cluster_mean` record."""
    record = cluster_mean(values, units)
    if not math.isfinite(record["mean"]):
        return "–", record
    mean = record["mean"]
    text = f"{mean:.3f}" if abs(mean) >= 0.01 or mean == 0 else f"{mean:.2g}"  # a small gap keeps its digits
    if not record["ci"].defined:
        return f"{text} ({record['note']})", record
    return f"{text} {ci_text(record['ci'].lo, record['ci'].hi)}", record


def covers_verdict(record: dict, paper: float) -> str:
    """agrees when the teacher-level CI covers the paper's number, else differs (with the direction)."""
    if record["n_teachers"] < MIN_TEACHERS or not record["ci"].defined:
        return f"{NOT_TESTABLE}: {record['n_teachers']} teachers (< {MIN_TEACHERS})"
    lo, hi = record["ci"].lo, record["ci"].hi
    if lo <= paper <= hi:
        return AGREES
    return f"{DIFFERS}: ours {'lower' if hi < paper else 'higher'} (CI excludes {paper:g})"


def positive_verdict(record: dict, what: str) -> str:
    if record["n_teachers"] < MIN_TEACHERS or not record["ci"].defined:
        return f"{NOT_TESTABLE}: {record['n_teachers']} teachers (< {MIN_TEACHERS})"
    if record["ci"].lo > 0:
        return AGREES
    if record["ci"].hi < 0:
        return f"{DIFFERS}: the opposite of {what}"
    return f"{DIFFERS}: {what} not shown (CI includes 0)"


def maxcut_rows(trials: pd.DataFrame) -> list[list]:
    """DP minus the mean of the same teacher's random partitions at the same k, and the share of them DP beats."""
    needed = {PARTITION_METHOD_PARAM, K_PARAM, TEACHER_KEY_PARAM, R2_POOLED_FINAL}
    if not needed <= set(trials) or not {"dp", "random"} <= set(trials[PARTITION_METHOD_PARAM].dropna()):
        return []
    rows = []
    for k, at_k in trials.groupby(K_PARAM, sort=True):
        cells, records = [], []
        for metric in (R2_POOLED_FINAL, over_layers(R2_POOLED_FINAL)):
            if metric not in at_k:
                cells.append("not logged")
                continue
            gaps, shares, units = [], [], []
            for teacher, group in at_k.groupby(TEACHER_KEY_PARAM):
                dp = group.loc[group[PARTITION_METHOD_PARAM] == "dp", metric].dropna()
                random = group.loc[group[PARTITION_METHOD_PARAM] == "random", metric].dropna()
                if len(dp) and len(random):
                    gaps.append(dp.mean() - random.mean())
                    shares.append(float((random < dp.mean()).mean()))
                    units.append(teacher)
            gap_text, gap = mean_cell(pd.Series(gaps, dtype=float), pd.Series(units))
            share_text, _ = mean_cell(pd.Series(shares, dtype=float), pd.Series(units))
            cells.append(f"gap {gap_text}; DP beats {share_text} of random partitions")
            records.append(gap)
        verdict = positive_verdict(records[0], "a DP advantage") if records else NOT_TESTABLE
        rows.append(
            [
                f"max-cut (DP) beats random contiguous partitions, k={int(k)}",
                "DP better",
                *cells,
                records[0]["n_teachers"] if records else 0,
                verdict,
                "independent (same teachers, paired)",
            ]
        )
    return rows


def standard_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials of the study's own recipe: not a random partition, the teacher's final weights (no snapshot), the
    full distillation arm; the per-SD Raptor R^2 is read on these."""
    keep = np.ones(len(trials), dtype=bool)
    if PARTITION_METHOD_PARAM in trials:
        keep &= (trials[PARTITION_METHOD_PARAM].astype(str) != "random").to_numpy()
    if TEACHER_SNAPSHOT_PARAM in trials:
        snapshot = trials[TEACHER_SNAPSHOT_PARAM]
        keep &= (snapshot.isna() | (snapshot.astype(str).isin(["", "nan", "None"]))).to_numpy()
    if ARM_PARAM in trials:
        keep &= (trials[ARM_PARAM].isna() | (trials[ARM_PARAM].astype(str) == "full")).to_numpy()
    return trials[keep]


def raptor_r2_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per SD rate, R^2 kind and token group: the Raptor's final-layer and mean-over-layers R^2 (`standard_trials`),
    mean of teacher means with t-intervals, and the paper's figure where it has one."""
    if SD_PARAM not in trials or TEACHER_KEY_PARAM not in trials:
        return pd.DataFrame()
    trials = standard_trials(trials)
    rows = []
    for sd, group in trials.dropna(subset=[SD_PARAM]).groupby(SD_PARAM, sort=True):
        for kind in R2_KINDS:
            for token in ("all", "cls", "patch"):
                final = r2_metric(kind, "final", token)
                if final not in group:
                    continue
                row = {SD_PARAM: sd, "R²": kind, "tokens": token}
                for stat, metric in (("final", final), ("mean", r2_metric(kind, "mean", token))):
                    if metric in group:
                        row[stat], row[f"{stat} record"] = mean_cell(group[metric], group[TEACHER_KEY_PARAM])
                row["paper"] = PAPER_RAPTOR_R2.get(float(sd), math.nan) if kind == "r2_pooled" else math.nan
                rows.append(row)
    return pd.DataFrame(rows)


def raptor_r2_rows(trials: pd.DataFrame) -> list[list]:
    """Our per-SD Raptor R^2 at the SD rates the paper reports, pooled (the reference's) and strict."""
    table = raptor_r2_table(trials)
    if table.empty:
        return []
    rows = []
    for row in table[table["tokens"] == "all"].to_dict("records"):
        paper = PAPER_RAPTOR_R2.get(float(row[SD_PARAM]))
        if paper is None:
            continue
        record = row["final record"]
        verdict = covers_verdict(record, paper)
        if row["R²"] != "r2_pooled":
            verdict = f"{NOT_TESTABLE}: the paper's R² is the pooled one (reference code); strict shown for contrast"
        mean = row.get("mean") if isinstance(row.get("mean"), str) else "not logged"
        rows.append(
            [
                f"Raptor {row['R²']} R² at SD {row[SD_PARAM]:g} (per-SD mean; the paper: CIFAR-100)",
                f"~{paper:.2f}",
                row["final"],
                mean,
                record["n_teachers"],
                verdict,
                "per-level description",
            ]
        )
    return rows


def head_vs_sd_rows(trials: pd.DataFrame) -> list[list]:
    """Teacher and Raptor accuracy through the teacher's head at the lowest and highest SD rate."""
    if not {ACC_HEAD, ACC_HEAD_TEACHER, SD_PARAM, TEACHER_KEY_PARAM} <= set(trials):
        return []
    levels = sorted(trials[SD_PARAM].dropna().unique())
    if len(levels) < 2:
        return []
    rows = []
    for metric, who in ((ACC_HEAD_TEACHER, "teacher"), (ACC_HEAD, "Raptor")):
        cells = []
        for sd in (levels[0], levels[-1]):
            at = trials[trials[SD_PARAM] == sd]
            cells.append(f"SD {sd:g}: {mean_cell(at[metric], at[TEACHER_KEY_PARAM])[0]}")
        n = int(trials.dropna(subset=[metric])[TEACHER_KEY_PARAM].nunique())
        rows.append(
            [
                f"{who} accuracy ({metric}) vs SD",
                "reported per SD (values not available offline)",
                "; ".join(cells),
                "–",
                n,
                f"{NOT_TESTABLE}: no paper number to hold it against",
                "description",
            ]
        )
    return rows


def replacement_rows(trials: pd.DataFrame) -> list[list]:
    """Layer replacement: intra-phase minus inter-phase accuracy per n, teacher means, t-interval over teachers."""
    if TEACHER_KEY_PARAM not in trials:
        return []
    images = trials[REPLACE_IMAGES].min() if REPLACE_IMAGES in trials else math.nan
    rows = []
    for n in REPLACE_NS:
        intra, inter = replace_metric("intra", n), replace_metric("inter", n)
        if not {intra, inter} <= set(trials) or trials[[intra, inter]].dropna().empty:
            continue
        frame = trials.dropna(subset=[intra, inter])
        gap_text, gap = mean_cell(frame[intra] - frame[inter], frame[TEACHER_KEY_PARAM])
        ours = (
            f"intra {frame[intra].mean():.3f}, inter {frame[inter].mean():.3f}; intra - inter {gap_text}; "
            f"{images:.0f} images"
        )
        verdict = positive_verdict(gap, "intra above inter")
        if not images >= MIN_REPLACE_IMAGES:
            verdict = f"{NOT_TESTABLE}: {images:.0f} images (< {MIN_REPLACE_IMAGES:,})"
        rows.append(
            [
                f"layer replacement, n={n}: intra-phase keeps accuracy, inter-phase collapses",
                "intra keeps, inter collapses",
                ours,
                "–",
                gap["n_teachers"],
                verdict,
                "independent",
            ]
        )
    return rows


def stage_rows(trials: pd.DataFrame) -> list[list]:
    """Training stages (teacher.snapshot): untrained teachers are easier to fit than trained ones; an overfitted one
    loses similarity and fidelity together. Differences are paired within a teacher (SD rate and seed)."""
    needed = {TEACHER_SNAPSHOT_PARAM, PRIMARY_PREDICTOR, R2_POOLED_FINAL}
    if not needed <= set(trials) or trials[TEACHER_SNAPSHOT_PARAM].dropna().nunique() < 2:
        return []
    identity = [c for c in (SD_PARAM, TEACHER_SEED_PARAM) if c in trials] or [TEACHER_KEY_PARAM]
    frame = trials.assign(
        stage=trials[TEACHER_SNAPSHOT_PARAM].astype(str), unit=trials[identity].astype(str).agg("/".join, axis=1)
    )
    stages = _stage_roles(frame)
    if stages is None:
        return []
    init, reference, overfit = stages
    means = frame.groupby(["unit", "stage"])[[PRIMARY_PREDICTOR, R2_POOLED_FINAL]].mean()
    rows = []
    for label, stage, claim, sign in (
        ("untrained (init)", init, "easier to fit", 1),
        ("overfitted (last snapshot)", overfit, "loses similarity and fidelity", -1),
    ):
        if stage is None:
            continue
        cells, verdicts, n = [], [], 0
        for metric in (R2_POOLED_FINAL, PRIMARY_PREDICTOR):
            diff = (means[metric].xs(stage, level="stage") - means[metric].xs(reference, level="stage")).dropna()
            mean, lo, hi, note = mean_ci_teachers(sign * diff.to_numpy(float))
            n = len(diff)
            cells.append(
                f"{metric}: {sign * mean:+.3f} {ci_text(*sorted((sign * lo, sign * hi)))}"
                + (f" ({note})" if note else "")
            )
            verdicts.append(positive_verdict({"n_teachers": n, "ci": _interval(lo, hi)}, claim))
        verdict = (
            verdicts[0]
            if sign > 0
            else (
                AGREES
                if all(v == AGREES for v in verdicts)
                else "; ".join(f"{m}: {v}" for m, v in zip(("fidelity", "similarity"), verdicts, strict=True))
            )
        )
        rows.append(
            [
                f"training stage: {label} vs the best teacher (snapshot {stage} vs {reference}): {claim}",
                claim,
                "; ".join(cells if sign < 0 else cells[:1]),
                "–",
                n,
                verdict,
                "paired within teacher",
            ]
        )
    return rows


def _interval(lo: float, hi: float) -> Interval:
    return Interval(*sorted((lo, hi))) if math.isfinite(lo) else Interval()


def _stage_roles(frame: pd.DataFrame) -> tuple[str | None, str, str | None] | None:
    """(init, reference, overfitted) snapshot labels: init = epoch 0, reference = 'best' (else the epoch with the
    best teacher accuracy), overfitted = the last epoch after the reference."""
    stages = list(frame["stage"].unique())
    epochs = sorted((float(s), s) for s in stages if _is_number(s))
    init = next((s for e, s in epochs if e == 0), None)
    if "best" in stages:
        reference = "best"
    else:
        trained = [s for e, s in epochs if e > 0]
        if not trained or TEACHER_TEST_ACC not in frame:
            return None
        accuracy = frame[frame["stage"].isin(trained)].groupby("stage")[TEACHER_TEST_ACC].mean()
        reference = str(accuracy.idxmax())
    later = [s for e, s in epochs if e > 0 and s != reference]
    overfit = later[-1] if later and (reference == "best" or float(later[-1]) > float(reference)) else None
    return init, reference, overfit


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def ktable_rows(trials: pd.DataFrame) -> list[list]:
    """acc.finetuned_ratio per k against the paper's 96.1 / 98.2 / 98.5% (fine-tuned probe)."""
    if not {ACC_FINETUNED_RATIO, K_PARAM, TEACHER_KEY_PARAM} <= set(trials):
        return []
    rows = []
    for k, group in trials.dropna(subset=[ACC_FINETUNED_RATIO]).groupby(K_PARAM, sort=True):
        cell, record = mean_cell(group[ACC_FINETUNED_RATIO], group[TEACHER_KEY_PARAM])
        paper = PAPER_ACC_RATIO.get(int(k))
        verdict = covers_verdict(record, paper) if paper is not None else f"{NOT_TESTABLE}: no paper figure at k={k}"
        rows.append(
            [
                f"k-table: {ACC_FINETUNED_RATIO} at k={int(k)}",
                f"{paper:.3f}" if paper else "–",
                cell,
                "–",
                record["n_teachers"],
                verdict,
                "independent per k",
            ]
        )
    return rows


def ablation_rows(trials: pd.DataFrame) -> list[list]:
    """The paper's six ablation rows: our accuracy through the teacher's head (or the fine-tuned probe) as a ratio to
    the teacher, against the paper's accuracy over ViT-B's 84.5%."""
    if ARM_PARAM not in trials or TEACHER_KEY_PARAM not in trials:
        return []
    rows = []
    for name, row, metric, paper in ABLATION:
        selector = ABLATION_ROWS[row]
        if metric not in trials:
            continue
        chosen = trials[np.logical_and.reduce([_matches(trials, p, v) for p, v in selector.items()])]
        values = chosen[metric].dropna()
        if values.empty:
            continue
        cell, record = mean_cell(values, chosen.loc[values.index, TEACHER_KEY_PARAM])
        head = chosen[ACC_HEAD].mean() if ACC_HEAD in chosen else math.nan
        ratio = paper / PAPER_TEACHER_ACC
        rows.append(
            [
                f"ablation: {name} ({_selector_text(selector)})",
                f"{paper:.1f}% (ratio {ratio:.3f})",
                f"{metric} {cell}; {ACC_HEAD} {head:.3f}",
                "–",
                record["n_teachers"],
                covers_verdict(record, ratio),
                "one arm of a paired design",
            ]
        )
    return rows


def _matches(trials: pd.DataFrame, param: str, wanted) -> np.ndarray:
    if param not in trials:
        return np.full(len(trials), wanted is True or not isinstance(wanted, bool))
    values = trials[param]
    if isinstance(wanted, bool):
        on = ~values.astype(str).str.lower().isin(OFF) & values.notna()
        return (on if wanted else ~on).to_numpy()
    return (values.astype(str) == str(wanted)).to_numpy()


def _selector_text(selector: dict) -> str:
    return ", ".join(f"{p}={v}" for p, v in selector.items())
