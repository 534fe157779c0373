"""The storage counter behind launch/zero_memory.py, on hand-counted tensors (one process)."""

import torch

from gptdist.studies.zero_memory import CudaPeak, paper_bytes, storage_bytes


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


class FakeAllocator:
    """torch.cuda's allocator counters for one device, by hand: allocated now, its peak, and reserved
    (cached blocks: never less than allocated, and not given back on free)."""

    def __init__(self):
        self.allocated, self.peak, self.reserved, self.devices = 0, 0, 0, []

    def alloc(self, n):
        self.allocated += n
        self.peak = max(self.peak, self.allocated)
        self.reserved = max(self.reserved, self.allocated + 64)

    def free(self, n):
        self.allocated -= n

    def reset_peak_memory_stats(self, device=None):
        self.devices.append(device)
        self.peak = self.allocated

    def max_memory_allocated(self, device=None):
        self.devices.append(device)
        return self.peak

    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_reserved(self, device=None):
        return self.reserved


def test_cuda_peak_reads_the_allocators_peak_since_start(monkeypatch):
    """The CUDA path on a CPU machine: torch.cuda's counters replaced by a hand-driven allocator. Before
    start: 900 bytes peaked, 500 held. Inside: +100 (a transient), freed, then +30. The step's peak is
    500 + 100 = 600 bytes: not the earlier 900 (no reset), not 530 (allocated now), not reserved (664)."""
    fake = FakeAllocator()
    for name in ("reset_peak_memory_stats", "max_memory_allocated", "memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    fake.alloc(900)
    fake.free(400)
    device = torch.device("cuda", 1)
    peak = CudaPeak(device)
    peak.start()
    fake.alloc(100)
    fake.free(100)
    fake.alloc(30)
    assert peak.read() == 600
    assert fake.devices == [device, device]  # the rank's own device, not the current one


def test_cuda_peak_is_none_off_cuda():
    peak = CudaPeak(torch.device("cpu"))
    peak.start()
    assert peak.read() is None
