"""Gradient bucket planning for the manual data-parallel backend (pure: no communication here).

The rule, after PyTorch DDP's reducer:

- Parameters are taken in REVERSE registration order. Backward runs roughly from the last layer to
  the first, so the gradients that are ready first land in bucket 0, and its all-reduce can start
  while the rest of backward still runs.
- Bucket 0 is small (`first_bucket_bytes`, default 1 MiB) so the first all-reduce starts early;
  every later bucket holds up to `bucket_cap_bytes` (default 25 MiB).
- A bucket never exceeds its cap, except a single parameter larger than the cap, which gets a bucket
  of its own (a parameter is never split across buckets).
- A bucket holds one dtype on one device (it becomes one flat tensor); a parameter of another dtype
  or device goes to its own run of buckets.
- Parameters that do not require a gradient are left out.

The plan is deterministic: the same model gives the same buckets on every rank, which is what lets
every rank launch bucket i as its i-th all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

MB = 1024 * 1024  # "MB" in the config means MiB, as in DDP's bucket_cap_mb


@dataclass
class Bucket:
    """One flat gradient buffer: parameters `names` laid out back to back at `offsets`."""

    index: int
    dtype: torch.dtype
    device: torch.device
    names: list[str] = field(default_factory=list)
    shapes: list[torch.Size] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # element offset of each parameter in the buffer
    numel: int = 0
    buffer: Optional[torch.Tensor] = None  # (numel,), allocated by the backend, not by the planner

    @property
    def bytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.names.append(name)
        self.shapes.append(tensor.shape)
        self.offsets.append(self.numel)
        self.numel += tensor.numel()

    def __repr__(self) -> str:
        return f"Bucket({self.index}, {len(self.names)} params, {self.numel} el, {self.bytes / MB:.3f} MiB, {self.dtype})"


def plan_buckets(
    named_params: Iterable[tuple[str, torch.Tensor]],
    bucket_cap_bytes: int = 25 * MB,
    first_bucket_bytes: int = 1 * MB,
) -> list[Bucket]:
    """Assign parameters (in registration order, e.g. `model.named_parameters()`) to buckets.

    Returns buckets in launch order (index 0 first). Works on meta tensors too (no memory needed).
    """
    if bucket_cap_bytes <= 0 or first_bucket_bytes <= 0:
        raise ValueError("bucket caps must be positive")
    params = [(n, p) for n, p in named_params if p.requires_grad]
    buckets: list[Bucket] = []
    # One bucket is open per (dtype, device); the rest of the rule is the same for each kind.
    open_buckets: dict[tuple[torch.dtype, torch.device], Bucket] = {}

    def cap(bucket: Bucket) -> int:
        return first_bucket_bytes if bucket.index == 0 else bucket_cap_bytes

    def new_bucket(kind: tuple[torch.dtype, torch.device]) -> Bucket:
        bucket = Bucket(index=len(buckets), dtype=kind[0], device=kind[1])
        buckets.append(bucket)
        open_buckets[kind] = bucket
        return bucket

    for name, p in reversed(params):
        kind = (p.dtype, p.device)
        bucket = open_buckets.get(kind) or new_bucket(kind)
        size = p.numel() * p.element_size()
        if bucket.numel > 0 and bucket.bytes + size > cap(bucket):
            bucket = new_bucket(kind)  # full: close it, this parameter starts the next one
        bucket.add(name, p)
    return buckets


def describe(buckets: list[Bucket]) -> str:
    """One line per bucket: index, size, parameter count, first and last parameter name."""
    lines = []
    for b in buckets:
        span = b.names[0] if len(b.names) == 1 else f"{b.names[0]} .. {b.names[-1]}"
        lines.append(f"bucket {b.index:3d}  {b.bytes / MB:9.3f} MiB  {len(b.names):4d} params  {span}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m gptdist.parallel.buckets --preset gpt2`: print the manual backend's bucket plan."""
    import argparse

    from gptdist.model import GPT, PRESETS

    parser = argparse.ArgumentParser(description="Print the gradient bucket plan of a model preset.")
    parser.add_argument("--preset", default="gpt2", choices=sorted(PRESETS))
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    parser.add_argument("--first-bucket-mb", type=float, default=1.0)
    args = parser.parse_args(argv)
    with torch.device("meta"):  # shapes only
        model = GPT(PRESETS[args.preset])
    buckets = plan_buckets(model.named_parameters(), int(args.bucket_cap_mb * MB), int(args.first_bucket_mb * MB))
    print(describe(buckets))


if __name__ == "__main__":
    main()
