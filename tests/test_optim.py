"""The learning-rate schedule and the parameter groups, against values worked out by hand."""

from __future__ import annotations

import pytest

from gptdist.config import TrainSection
from gptdist.model import GPT, PRESETS
from gptdist.optim import lr_at, param_groups


def test_lr_schedule_hand_values():
    # lr 1.0, min 0.1, 2 warm-up steps, 6 steps: warm-up 0.5, 1.0; cosine over the 4 steps after it:
    # progress 0, 1/4, 2/4, 3/4 -> 0.1 + 0.9 * 0.5 * (1 + cos(pi * p)) = 1.0, 0.868198, 0.55, 0.231802; then 0.1.
    train = TrainSection(lr=1.0, min_lr_ratio=0.1, warmup_steps=2, max_steps=6)
    got = [lr_at(s, train) for s in range(8)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.8681981, 0.55, 0.2318019, 0.1, 0.1], abs=1e-6)


def test_no_warmup_starts_at_the_peak():
    train = TrainSection(lr=3e-4, min_lr_ratio=0.0, warmup_steps=0, max_steps=2)
    assert [lr_at(s, train) for s in range(3)] == pytest.approx([3e-4, 1.5e-4, 0.0])


def test_weight_decay_only_on_matrices():
    model = GPT(PRESETS["test"])
    decay, no_decay = param_groups(model.named_parameters(), 0.1)
    # test preset: 2 blocks x (c_attn, c_proj, c_fc, mlp c_proj weights) + wte + wpe = 10 matrices;
    # biases (4 per block) and LayerNorm weight/bias (2 x 2 per block, 2 for ln_f) = 2 x (4 + 4) + 2 = 18.
    assert (len(decay["params"]), decay["weight_decay"]) == (10, 0.1)
    assert (len(no_decay["params"]), no_decay["weight_decay"]) == (18, 0.0)
