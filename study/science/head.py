"""Accuracy through the teacher's own classifier head (docs/science.md §5, teacher-head accuracy and fine-tuned probe).

The paper scores its ablation table with the teacher's pretrained linear head, frozen, applied to the Raptor's
final states exactly as the teacher applies it to its own: timm's ``forward_head(norm(x_L))``, which pools the
tokens as the model's ``global_pool`` says (cls token, mean of the patch tokens, attention pooling), applies
``fc_norm`` and then the head. `TeacherHead` is that path; its input, the pooled features (`head_input`,
``pre_logits``), also feeds the fine-tuned probe (`finetune_head`). A headless teacher (``num_classes`` 0, e.g.
the ONNX ViT-S/14) has no head: its head is the teacher's linear probe fitted once on the teacher's pooled
features (`linear_from_probe` turns the fitted scikit-learn pipeline into the equivalent `nn.Linear`).

The fine-tuned probe (the paper's last ablation row and its k = 2/3/4 table): a copy of that linear head trained
on the Raptor's pooled final-norm features of the train split, full batch, FINETUNE_STEPS AdamW steps at
FINETUNE_LR (weight decay FINETUNE_WEIGHT_DECAY) on the cross-entropy, in the standardised coordinates of those
features (as the probes are fit, docs/science.md §5), then scored on the test split. Full batch and no data order
make it deterministic given its inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.pipeline import Pipeline
from torch import nn

from study.runtime import autocast

FINETUNE_STEPS = 300
"""Full-batch AdamW steps of the fine-tuned probe."""
FINETUNE_LR = 1e-2
"""Learning rate of the fine-tuned probe, in the standardised coordinates of the features (`finetune_head`)."""
FINETUNE_WEIGHT_DECAY = 1e-4
"""AdamW's decoupled weight decay of the fine-tuned probe (the Raptor stages' default)."""


def linear_from_probe(probe: Pipeline) -> nn.Linear:
    """A fitted `study.science.fidelity.fit_linear_probe` pipeline (StandardScaler -> LogisticRegression) as one
    `nn.Linear` on the raw features whose logits have the probe's decision function as argmax (and, for C > 2
    classes, equal it): W = coef / scale, b = intercept - W @ mean. A binary probe becomes two logits
    (-z/2, z/2), whose softmax is the probe's probability. The probe's classes must be 0..C-1 (logit c is class c)."""
    scaler, logistic = probe[0], probe[-1]
    classes = np.asarray(logistic.classes_)
    if not np.array_equal(classes, np.arange(len(classes))):
        raise ValueError(f"the probe's classes must be 0..C-1 to index logits, got {classes.tolist()}")
    coef = np.asarray(logistic.coef_, dtype=np.float64) / np.asarray(scaler.scale_, dtype=np.float64)
    bias = np.asarray(logistic.intercept_, dtype=np.float64) - coef @ np.asarray(scaler.mean_, dtype=np.float64)
    if len(classes) == 2:
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    linear = nn.Linear(coef.shape[1], coef.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(coef))
        linear.bias.copy_(torch.from_numpy(bias))
    return linear.requires_grad_(False)


def head_input(model: nn.Module, x_last: torch.Tensor) -> torch.Tensor:
    """What the teacher's head reads: ``forward_head(norm(x_L), pre_logits=True)``, pooled as its ``global_pool``
    says, after ``fc_norm``. x_last [B, T, D] -> [B, F]."""
    return model.forward_head(model.norm(x_last), pre_logits=True)


class TeacherHead(nn.Module):
    """The teacher's classifier on final token states: x_L [B, T, D] -> logits [B, C], as the teacher reads out.

    Args:
        model: the teacher (a timm VisionTransformer, frozen); its ``norm``, pooling, ``fc_norm`` and ``head``
            are used as they are.
        probe: for a headless teacher (``num_classes`` 0), its linear probe fitted on the teacher's pooled
            features (`head_input`), a scikit-learn pipeline as `fit_linear_probe` returns; ignored otherwise.
    """

    def __init__(self, model: nn.Module, probe: Pipeline | None = None):
        super().__init__()
        self.model = model
        if getattr(model, "num_classes", 0):
            self.linear = model.head
        elif probe is None:
            raise ValueError("a headless teacher (num_classes 0) needs its linear probe as its head")
        else:
            self.linear = linear_from_probe(probe)

    def forward(self, x_last: torch.Tensor) -> torch.Tensor:
        return self.linear(head_input(self.model, x_last))


@torch.no_grad()
def pooled_features(
    model: nn.Module, finals: Any, device: torch.device | str = "cpu", chunk: int = 256
) -> torch.Tensor:
    """`head_input` of the teacher `model` on final states [N, T, D] (an array, memmap or tensor), chunk by chunk
    -> [N, F] float32 CPU."""
    out = []
    for start in range(0, len(finals), chunk):
        part = finals[start : start + chunk]
        x = (part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))).to(device).float()
        out.append(head_input(model, x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def rollout_pooled(
    raptor: nn.Module, model: nn.Module, states: Any, device: torch.device, amp: bool, chunk: int = 256
) -> torch.Tensor:
    """`head_input` of the teacher `model` on the Raptor's final state after a rollout from each sample's x_0
    (states [N, L+1, T, D]; autocast as the Raptor's other read-outs) -> [N, F] float32 CPU."""
    raptor.eval()
    out = []
    for start in range(0, len(states), chunk):
        x0 = torch.from_numpy(np.array(states[start : start + chunk][:, 0])).to(device).float()
        with autocast(device, amp):
            final = raptor.final(x0)
        out.append(head_input(model, final.float()).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def head_accuracy(linear: nn.Module, features: torch.Tensor, labels: Any) -> float:
    """Accuracy of the linear head on pooled features [N, F] against labels [N]."""
    pred = linear(features.to(next(linear.parameters()).device)).argmax(dim=-1).cpu().numpy()
    return float(np.mean(pred == np.asarray(labels)))


def finetune_head(
    linear: nn.Linear,
    features: torch.Tensor,
    labels: Any,
    steps: int = FINETUNE_STEPS,
    lr: float = FINETUNE_LR,
    weight_decay: float = FINETUNE_WEIGHT_DECAY,
) -> nn.Linear:
    """A copy of `linear` fine-tuned on pooled features [N, F] and labels [N] (module docstring): full-batch
    AdamW on the cross-entropy for `steps` steps, in the standardised coordinates of `features` (the head
    rewritten as W * std, b + W @ mean on (x - mean) / std, and back), so that a step moves the head by the same
    amount whatever the scale of the features or of the head's weights. `linear` itself is left unchanged."""
    x = features.detach().float().cpu()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    weight0, bias0 = linear.weight.detach().float().cpu(), linear.bias.detach().float().cpu()
    weight = (weight0 * std).requires_grad_(True)
    bias = (bias0 + weight0 @ mean).requires_grad_(True)
    z, y = (x - mean) / std, torch.as_tensor(np.asarray(labels), dtype=torch.long)
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(z @ weight.T + bias, y).backward()
            optimizer.step()
    tuned = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        tuned.weight.copy_(weight / std)
        tuned.bias.copy_(bias - (weight / std) @ mean)
    return tuned.requires_grad_(False)


def head_scores(
    linear: nn.Module,
    teacher_test: torch.Tensor,
    raptor_train: torch.Tensor,
    raptor_test: torch.Tensor,
    y_train: Any,
    y_test: Any,
    finetune: bool = True,
) -> dict[str, float]:
    """The teacher-head accuracies from pooled features (`pooled_features`) of the test and train splits.

    Keys: 'head' (the frozen head on the Raptor's test features), 'head_teacher' (on the teacher's), 'head_ratio',
    and with `finetune` 'finetuned' (the head fine-tuned on the Raptor's train features, on its test features)
    and 'finetuned_ratio' (over 'head_teacher'). Ratios are NaN when the teacher scores 0."""
    teacher = head_accuracy(linear, teacher_test, y_test)
    out = {"head": head_accuracy(linear, raptor_test, y_test), "head_teacher": teacher}
    if finetune:
        out["finetuned"] = head_accuracy(finetune_head(linear, raptor_train, y_train), raptor_test, y_test)
    for name in ("head", "finetuned"):
        if name in out:
            out[f"{name}_ratio"] = out[name] / teacher if teacher > 0 else float("nan")
    return out
