"""The storage counter behind launch/zero_memory.py, on hand-counted tensors (one process)."""

import torch

from gptdist.studies.zero_memory import paper_bytes, storage_bytes


def test_counts_each_kind_once_from_the_tensors():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)  # 12 + 3 = 15 fp32 parameters: 60 bytes
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    # grads 60 B; AdamW: exp_avg + exp_avg_sq = 120 B (the 0-d `step` counters are not state storage)
    assert storage_bytes(model, optimizer) == {"params": 60, "grads": 60, "optim": 120, "total": 240}


def test_views_of_one_buffer_count_the_buffer_once():
    """As with bucket views: two gradients that are views of one 10-element buffer count 40 bytes."""
    model = torch.nn.Linear(3, 2)  # 6 + 2 = 8 parameters
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    bucket = torch.zeros(10)
    model.weight.grad = bucket[:6].view(2, 3)
    model.bias.grad = bucket[6:8]
    assert storage_bytes(model, optimizer) == {"params": 32, "grads": 40, "optim": 0, "total": 72}


def test_paper_rows_at_the_two_ends():
    """DDP holds 16 bytes per parameter on every rank and ZeRO-3 16/N (ZeRO paper, fp32 Adam: 4+4+8)."""
    assert paper_bytes("ddp", 1000, 4)["total"] == 16_000
    assert paper_bytes("zero3", 1000, 4)["total"] == 4_000
    assert paper_bytes("zero2", 1000, 4) == {"params": 4000, "grads": 1000, "optim": 2000, "total": 7000}
