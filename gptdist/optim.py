"""AdamW with GPT-2/3 style parameter groups, and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn as nn

if TYPE_CHECKING:  # config.py builds its `parallel` section from the backends, which import this module
    from gptdist.config import TrainSection


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Decay the >=2-D tensors (matmul weights, embeddings); never biases or LayerNorm gains.

    Works on sharded (DTensor) parameters too: `dim()` is the global tensor's rank.
    """
    decay, no_decay = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def use_fused(setting: str, device: torch.device) -> bool:
    """Fused AdamW (one kernel for all tensors) on CUDA; the foreach path elsewhere."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return device.type == "cuda"


def build_optimizer(module: nn.Module, train: TrainSection, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(module.named_parameters(), train.weight_decay)
    return torch.optim.AdamW(
        groups,
        lr=train.lr,
        betas=(train.beta1, train.beta2),
        eps=train.eps,
        fused=use_fused(train.fused_adamw, device),
    )


def lr_at(step: int, train: TrainSection) -> float:
    """Linear warmup for `warmup_steps`, then cosine decay to lr * min_lr_ratio at `max_steps`.

    `step` counts optimizer steps from 0.
    """
    max_lr, min_lr = train.lr, train.lr * train.min_lr_ratio
    if step < train.warmup_steps:
        return max_lr * (step + 1) / train.warmup_steps
    if step >= train.max_steps:
        return min_lr
    decay_steps = max(1, train.max_steps - train.warmup_steps)
    progress = (step - train.warmup_steps) / decay_steps  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr + coeff * (max_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
