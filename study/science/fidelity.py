"""Fidelity of a Raptor to its teacher (docs/science.md §5): per-layer R^2 and task fidelity.

R^2 definition used throughout: a "feature" is one (token position, channel) entry of
a layer's state; over N held-out samples,
    R^2 = 1 - SSE / SST,  SSE = sum_n sum_f (pred - target)^2,
                          SST = sum_n sum_f (target - mean_n target)^2,
where mean_n is the per-feature mean over samples. Sums run over every feature of the
token group, so high-variance features weigh more. R^2 is 1 for a perfect prediction,
0 for predicting the per-feature mean, and NaN when SST is 0. This is the strict `r2`.

The pooled `r2_pooled` (the reference code's, docs/science.md §5) centres SST on ONE
scalar mean mu of all entries (samples x features) of the token group at that layer:
    SST_pooled = sum_n sum_f (target - mu)^2 = SST + N * sum_f (mean_n target_f - mu)^2,
so it also counts the spread of the per-feature means and r2_pooled >= r2 always.

Linear probe (docs/science.md §5, the paper's protocol): features = final-norm cls token
concatenated with the final-norm mean patch token (`probe_features`); StandardScaler;
multinomial logistic regression (lbfgs) with C = PROBE_C and at most PROBE_MAX_ITER
iterations, fit on the train split and scored on the test split. The fit runs on PROBE_THREADS
BLAS thread(s): lbfgs on [N ~ 10^3, 2D ~ 10^2-10^3] features is a loop of small matmuls, which
many BLAS threads slow down (results/throughput/README.md: 1,500 x 384 Fashion features, 0.7 s on
1 thread vs 2.3 s on 2), and one thread makes the fitted probe the same on every machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from study.runtime import autocast

if TYPE_CHECKING:
    from study.science.raptor import Raptor


def token_groups(num_registers: int) -> dict[str, slice]:
    """Token slices of each group: 'cls' (index 0), 'patch' (after the registers), 'reg' (1..R, if R > 0)."""
    groups = {"cls": slice(0, 1), "patch": slice(1 + num_registers, None)}
    if num_registers:
        groups["reg"] = slice(1, 1 + num_registers)
    return groups


class FidelityAccumulator:
    """Streaming per-layer R^2 of predicted vs teacher states, per token group.

    Feed batches with `update(pred, target)`, tensors [B, L, T, D] over layers 1..L;
    tokens are cls (0), registers (1..R) and patches (rest). Per-feature target mean
    and centred sum of squares are merged across batches with Chan et al.'s parallel
    update in float64, so the result equals the one-shot R^2 on the concatenated data.
    """

    def __init__(self, num_layers: int, num_registers: int) -> None:
        self.num_layers = num_layers
        self.num_registers = num_registers
        self.count = 0
        self.mean: torch.Tensor | None = None  # [L, T, D] per-feature target mean
        self.m2: torch.Tensor | None = None  # [L, T, D] sum of squared deviations (SST)
        self.sse: torch.Tensor | None = None  # [L, T, D] sum of squared errors

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: pred and target [B, L, T, D] (layers 1..L, no x_0)."""
        if pred.shape != target.shape or target.ndim != 4 or target.shape[1] != self.num_layers:
            raise ValueError(f"expected matching [B, {self.num_layers}, T, D], got {pred.shape} and {target.shape}")
        if self.mean is None:
            self.mean, self.m2, self.sse = (
                torch.zeros(target.shape[1:], dtype=torch.float64, device=target.device) for _ in range(3)
            )
        batch = target.shape[0]
        total = self.count + batch
        for layer in range(self.num_layers):  # one layer at a time bounds the float64 temporaries
            t = target[:, layer].double()
            batch_mean = t.mean(dim=0)
            delta = batch_mean - self.mean[layer]
            self.m2[layer] += (t - batch_mean).square().sum(dim=0) + delta.square() * (self.count * batch / total)
            self.mean[layer] += delta * (batch / total)
            self.sse[layer] += (pred[:, layer].double() - t).square().sum(dim=0)
        self.count = total

    def compute(self, pooled: bool = False) -> dict[str, np.ndarray]:
        """R^2 per layer [L] for groups 'all', 'cls', 'patch' and 'reg' (if R > 0).

        `pooled`: the reference's R^2, SST around one scalar mean per (layer, group) (module docstring)."""
        if self.m2 is None:
            raise ValueError("no batches were added")
        groups = {"all": slice(None), **token_groups(self.num_registers)}
        out = {}
        for name, tokens in groups.items():
            sst = self.m2[:, tokens].sum(dim=(1, 2))
            if pooled:
                means = self.mean[:, tokens].flatten(1)  # [L, F] per-feature means
                sst = sst + self.count * (means - means.mean(dim=1, keepdim=True)).square().sum(dim=1)
            out[name] = _r2(self.sse[:, tokens].sum(dim=(1, 2)), sst)
        return out


def r2_score(pred: Any, target: Any, pooled: bool = False) -> float:
    """R^2 of pred against target, arrays [N, ...] (features = all trailing axes); `pooled`: SST around
    the scalar mean of all entries instead of the per-feature means."""
    pred, target = torch.as_tensor(pred).double(), torch.as_tensor(target).double()
    sse = (pred - target).square().sum()
    sst = (target - (target.mean() if pooled else target.mean(dim=0))).square().sum()
    return float(_r2(sse.reshape(1), sst.reshape(1))[0])


def _r2(sse: torch.Tensor, sst: torch.Tensor) -> np.ndarray:
    sse, sst = sse.cpu().numpy(), sst.cpu().numpy()
    return 1.0 - np.divide(sse, sst, out=np.full_like(sst, np.nan), where=sst > 0)


PROBE_C = 1.0
"""Inverse L2 strength of the probe's logistic regression: fixed (sklearn's default), not tuned per model, so
teacher, Raptor and floor probes are the same recipe."""
PROBE_MAX_ITER = 1000
"""Iteration budget of the probe's lbfgs solver."""
PROBE_THREADS = 1
"""BLAS threads of a probe fit (module docstring)."""
FLOOR_DEEP_LAYERSCALE = 1.0
"""LayerScale gamma of the random Raptor behind the deep floor (``acc.floor_deep``, docs/science.md §5): random
blocks at full strength, so the probe reads random deep features. The plain floor uses the Raptor's LayerScale
init (1e-5), which leaves the random Raptor nearly the identity: a probe on the normed embeddings."""


def probe_features(norm: Any, x_last: torch.Tensor, num_registers: int) -> torch.Tensor:
    """The paper's probe features: final-norm cls ++ final-norm mean patch token. x_last [B, T, D] -> [B, 2D].

    `norm` is the teacher's final norm; the first D columns are the cls readout alone."""
    normed = norm(x_last)
    return torch.cat([normed[:, 0], normed[:, 1 + num_registers :].mean(dim=1)], dim=-1)


def fit_linear_probe(features: Any, labels: Any, seed: int = 0) -> Pipeline:
    """Standardise then multinomial logistic regression (C = PROBE_C, PROBE_MAX_ITER); features [N, D], labels [N]."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER, random_state=seed))
    with threadpool_limits(PROBE_THREADS, user_api="blas"):
        return probe.fit(_numpy(features), _numpy(labels))


def own_probe_accuracy(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any, seed: int = 0) -> float:
    """Test accuracy of the probe fit on a model's OWN train features (the paper's protocol)."""
    probe = fit_linear_probe(train_feats, train_labels, seed=seed)
    return float(np.mean(probe.predict(_numpy(test_feats)) == _numpy(test_labels)))


def probe_recovery(acc_teacher: float, acc_raptor: float, acc_floor: float) -> dict[str, float]:
    """acc.ratio = raptor / teacher and acc.recovered = (raptor - floor) / (teacher - floor) (docs/science.md §5);
    NaN where the denominator is not positive."""
    gap = acc_teacher - acc_floor
    return {
        "ratio": acc_raptor / acc_teacher if acc_teacher > 0 else float("nan"),
        "recovered": (acc_raptor - acc_floor) / gap if gap > 0 else float("nan"),
    }


def task_fidelity(probe: Pipeline, teacher_feats: Any, raptor_feats: Any, labels: Any) -> dict[str, float]:
    """Accuracy of one probe on teacher vs Raptor features [N, D] of the same samples.

    Keys: acc_teacher, acc_raptor, acc_ratio (= acc_raptor / acc_teacher, NaN if the
    teacher scores 0), agreement (fraction of samples with identical predictions).
    """
    labels = _numpy(labels)
    teacher_pred = probe.predict(_numpy(teacher_feats))
    raptor_pred = probe.predict(_numpy(raptor_feats))
    acc_teacher = float(np.mean(teacher_pred == labels))
    acc_raptor = float(np.mean(raptor_pred == labels))
    return {
        "acc_teacher": acc_teacher,
        "acc_raptor": acc_raptor,
        "acc_ratio": acc_raptor / acc_teacher if acc_teacher > 0 else float("nan"),
        "agreement": float(np.mean(teacher_pred == raptor_pred)),
    }


class RolloutFidelity(NamedTuple):
    """A rollout's fidelity on held-out states: strict and pooled R^2 per group [L], probe features [N, 2D]."""

    r2: dict[str, np.ndarray]
    r2_pooled: dict[str, np.ndarray]
    features: torch.Tensor


@torch.no_grad()
def evaluate_fidelity(
    raptor: Raptor, states: np.ndarray, num_registers: int, device: torch.device, amp: bool, batch_size: int = 256
) -> RolloutFidelity:
    """Rollout from x_0 on held-out states -> R^2 (strict and pooled, docs/science.md §5) per group [L] and the
    Raptor's probe features (final-norm cls ++ mean patch) [N, 2D]."""
    raptor.eval()
    acc = FidelityAccumulator(raptor.num_layers, num_registers)
    feats = []
    for start in range(0, len(states), batch_size):
        part = states[start : start + batch_size]  # a device-resident tensor (validation) or an array / memmap
        batch = (part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))).to(device).float()
        with autocast(device, amp):
            pred = raptor.rollout(batch[:, 0])
        acc.update(pred.float(), batch[:, 1:])
        feats.append(raptor.probe_features(pred[:, -1].float()).cpu())
    return RolloutFidelity(acc.compute(), acc.compute(pooled=True), torch.cat(feats))


@torch.no_grad()
def rollout_features(
    raptor: Raptor, states: Any, device: torch.device, amp: bool, batch_size: int = 256
) -> torch.Tensor:
    """The Raptor's probe features [N, 2D] after a rollout from each sample's x_0 (states [N, L+1, T, D])."""
    raptor.eval()
    feats = []
    for start in range(0, len(states), batch_size):
        x0 = torch.from_numpy(np.array(states[start : start + batch_size][:, 0])).to(device).float()
        with autocast(device, amp):
            pred = raptor.rollout(x0)
        feats.append(raptor.probe_features(pred[:, -1].float()).cpu())
    return torch.cat(feats)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
