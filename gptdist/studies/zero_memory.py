"""Memory per rank of DDP, ZeRO-1, ZeRO-2 and FSDP2 (ZeRO-3), measured and against the ZeRO paper.

Measured (CPU): the bytes of the storages that hold parameters, gradients and optimizer state on this
rank, counted from the actual tensors right after the optimizer step (when all three exist), each
storage once (a gradient that is a view of a bucket counts the bucket; a DTensor counts its local
shard). Transient buffers (zero stage 2's staging bucket, FSDP's gathered parameters, activations) are
not storage of the three kinds and are not counted; on CUDA the allocator's peak over the steps is
reported beside the count, which includes them.

Modelled: Rajbhandari et al. 2020 (ZeRO), section 3 / figure 1. With mixed-precision Adam a replica holds
2Ψ bytes of fp16 parameters, 2Ψ of fp16 gradients and KΨ of optimizer state, K = 12 (fp32 master
weights, momentum, variance). This project trains in fp32: the parameters ARE the master weights, so
parameters 4Ψ, gradients 4Ψ, optimizer state K=8 (momentum + variance). Per rank, N ranks:

    DDP (replicated)        4Ψ + 4Ψ   + 8Ψ        = 16Ψ
    ZeRO-1 (P_os)           4Ψ + 4Ψ   + 8Ψ/N
    ZeRO-2 (P_os+g)         4Ψ + 4Ψ/N + 8Ψ/N
    ZeRO-3 (P_os+g+p, FSDP) 4Ψ/N + 4Ψ/N + 8Ψ/N     = 16Ψ/N

Run under torchrun (launch/zero_memory.py does that at each world size and writes the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import subprocess
import sys
import json
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist

from gptdist.config import TrainSection, build_config
from gptdist.dist import DistContext
from gptdist.model import GPT, GPTConfig, PRESETS

# label -> (backend, options, paper row); options are the backend's Options fields
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "ddp": ("ddp", {}, "ddp"),
    "zero1": ("zero", {"stage": 1}, "zero1"),
    "zero2": ("zero", {"stage": 2}, "zero2"),
    "fsdp (ZeRO-3)": ("fsdp", {"reshard_after_forward": True}, "zero3"),
    "fsdp no reshard": ("fsdp", {"reshard_after_forward": False}, "zero3"),
}

# bytes per parameter (Ψ) of each kind, given world size n: fp32 training, Adam (see the module docstring)
PAPER = {
    "ddp": lambda n: {"params": 4, "grads": 4, "optim": 8},
    "zero1": lambda n: {"params": 4, "grads": 4, "optim": 8 / n},
    "zero2": lambda n: {"params": 4, "grads": 4 / n, "optim": 8 / n},
    "zero3": lambda n: {"params": 4 / n, "grads": 4 / n, "optim": 8 / n},
}


def paper_bytes(row: str, numel: int, world: int) -> dict[str, float]:
    per_param = PAPER[row](world)
    out = {kind: per_param[kind] * numel for kind in ("params", "grads", "optim")}
    out["total"] = sum(out.values())
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def storage_bytes(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the distinct storages behind parameters, gradients and optimizer state on this rank."""
    seen: set[int] = set()

    def count(tensors: Iterable[Optional[torch.Tensor]]) -> int:
        total = 0
        for t in tensors:
            if t is None or not isinstance(t, torch.Tensor):
                continue
            storage = _local(t).untyped_storage()
            if storage.data_ptr() in seen or storage.nbytes() == 0:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return total

    opt_params = [p for g in optimizer.param_groups for p in g["params"]]
    params = count(list(module.parameters()) + opt_params)  # zero's pieces are views of the flat params
    grads = count([p.grad for p in module.parameters()] + [p.grad for p in opt_params])
    optim = count([v for state in optimizer.state.values() for v in state.values() if v.dim() > 0])
    return {"params": params, "grads": grads, "optim": optim, "total": params + grads + optim}


class CudaPeak:
    """The CUDA caching allocator's peak of allocated bytes on `device` since `start()`: what the step
    really needs, transient buffers included (gathered parameters, staging buckets, activations). Not
    `memory_allocated` (now, not the peak) nor `max_memory_reserved` (the allocator's cached blocks too).
    On any other device both calls do nothing and `read()` is None."""

    def __init__(self, device: torch.device):
        self.device = device
        self.on_cuda = device.type == "cuda"

    def start(self) -> None:
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)  # the peak restarts at what is allocated now

    def read(self) -> Optional[int]:
        return torch.cuda.max_memory_allocated(self.device) if self.on_cuda else None


def _backend(name: str, options: dict[str, Any], model: torch.nn.Module, ctx: DistContext, recorder=None):
    from gptdist.parallel import backend_class

    cls = backend_class(name)
    return cls(model, ctx, cls.Options(**options), recorder)


def measure_variant(label: str, gpt_cfg: GPTConfig, ctx: DistContext, batch: int, seq_len: int, steps: int) -> dict[str, Any]:
    """Train `steps` AdamW steps on random tokens; count storage after the last optimizer step."""
    name, options, row = VARIANTS[label]
    torch.manual_seed(0)
    model = GPT(gpt_cfg).to(ctx.device)
    backend = _backend(name, options, model, ctx)
    optimizer = backend.build_optimizer(TrainSection(fused_adamw="off"), ctx.device)
    peak = CudaPeak(ctx.device)
    peak.start()
    g = torch.Generator().manual_seed(ctx.rank)
    for _ in range(steps):
        x = torch.randint(0, gpt_cfg.vocab_size, (batch, seq_len + 1), generator=g).to(ctx.device)
        backend.set_grad_sync(True)
        _, loss = backend.module(x[:, :-1], x[:, 1:])
        loss.backward()
        backend.finish_grad_sync()
        backend.clip_grad_norm(1.0)
        backend.optimizer_step(optimizer)
        measured = storage_bytes(backend.raw_model, optimizer)  # all three kinds exist here
        backend.zero_grad()
    result = {"label": label, "backend": name, "options": options, "paper_row": row, "measured": measured}
    if peak.read() is not None:
        result["cuda_peak_allocated"] = peak.read()
    backend.close()
    del backend, model, optimizer
    gc.collect()
    return result


def _synthetic_data(folder: Path, vocab: int, tokens: int = 200_000) -> Path:
    """Random tokens in the prepared-shard format (the comparison times steps; the text does not matter)."""
    from gptdist.data.shards import write_shard

    import numpy as np

    rng = np.random.default_rng(0)
    entries = []
    for split, n in (("val", tokens // 10), ("train", tokens)):
        ids = rng.integers(0, vocab, size=n).astype(np.uint16)
        sha = write_shard(folder / f"{split}_000000.bin", ids)
        entries.append({"file": f"{split}_000000.bin", "split": split, "tokens": n, "sha256": sha, "max_token": int(ids.max())})
    (folder / "manifest.json").write_text(json.dumps({"shards": entries, "tokenizer": {"name": "random"}}))
    return folder


def compare_run(label: str, overrides: dict[str, Any], ctx: DistContext, out_dir: Path,
                after_fit=None) -> Optional[dict[str, Any]]:
    """One instrumented training run through the real trainer; rank 0 returns step time, exposed comm
    (median and p95 over steps after the first) and the recorder's bytes per step by collective.
    `after_fit(trainer)`, called on every rank before the trainer closes: its value is returned as "memory"."""
    from gptdist.trainer import Trainer

    cfg = build_config(None, dict(overrides, **{"log.run_name": label, "log.out_dir": str(out_dir)}))
    trainer = Trainer(cfg, ctx)
    try:
        summary = trainer.fit()
        extra = after_fit(trainer) if after_fit is not None else None
    finally:
        trainer.close()
    if not ctx.is_main:
        return None
    skip = cfg.instrument.summary_skip_steps
    per_op: dict[str, int] = {}
    for line in (out_dir / label / "ranks" / "rank0" / "collectives.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["step"] > skip:
            per_op[rec["op"]] = per_op.get(rec["op"], 0) + rec["bytes"]
    timed_steps = cfg.train.max_steps - skip
    stats = summary["instrument"]["all_ranks"]
    return {
        "label": label, "step_ms": stats["step_ms"], "comm_ms": stats["comm_ms"], "exposed_ms": stats["exposed_ms"],
        "overlap": stats["overlap"], "bytes_per_step": {op: b / timed_steps for op, b in sorted(per_op.items())},
        "losses": summary["losses"], **({"memory": extra} if after_fit is not None else {}),
    }


def worker(args) -> int:
    """Body of one torchrun rank: the memory table rows, then (optionally) the zero2-vs-fsdp comparison."""
    from gptdist.dist import init_distributed, teardown

    ctx = init_distributed(args.device, timeout_s=600, need_group=True)
    try:
        gpt_cfg = dataclasses.replace(PRESETS[args.preset], block_size=args.seq_len)
        numel = sum(p.numel() for p in GPT(gpt_cfg).parameters())
        rows = []
        for label in VARIANTS:
            row = measure_variant(label, gpt_cfg, ctx, args.batch_size, args.seq_len, args.steps)
            gathered: list[Any] = [None] * ctx.world_size
            dist.all_gather_object(gathered, row["measured"])
            row["measured_per_rank"] = gathered
            row["paper"] = paper_bytes(row["paper_row"], numel, ctx.world_size)
            rows.append(row)
        result: dict[str, Any] = {
            "world_size": ctx.world_size, "preset": args.preset, "numel": numel, "batch_size": args.batch_size,
            "seq_len": args.seq_len, "steps": args.steps, "device": str(ctx.device), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
        }
        if args.compare_steps:
            out_dir = Path(args.run_dir)
            data = out_dir / "data"
            if ctx.is_main:
                data.mkdir(parents=True, exist_ok=True)
                _synthetic_data(data, gpt_cfg.vocab_size)
            dist.barrier()
            base = {
                "model.preset": args.preset, "model.block_size": gpt_cfg.block_size, "data.dir": str(data),
                "data.batch_size": args.batch_size, "data.seq_len": args.seq_len, "train.max_steps": args.compare_steps,
                "train.warmup_steps": 1, "train.device": args.device, "eval.val_every": 0, "eval.sample_every": 0,
                "checkpoint.at_end": False, "log.overwrite": True,
            }
            result["compare"] = [
                compare_run("zero2", dict(base, backend="zero"), ctx, out_dir),
                compare_run("fsdp_no_reshard", dict(base, **{"backend": "fsdp", "parallel.fsdp.reshard_after_forward": False}), ctx, out_dir),
            ]
        if ctx.is_main:
            Path(args.out).write_text(json.dumps(result, indent=1))
    finally:
        teardown()
    return 0


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per (world size, variant); MiB measured (rank 0) vs modelled."""
    mib = 1024 * 1024
    lines = [
        "| ranks | variant | params MiB | grads MiB | optim MiB | total MiB | paper total MiB | measured / paper |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for row in result["rows"]:
            m, p = row["measured"], row["paper"]
            lines.append(
                f"| {result['world_size']} | {row['label']} | {m['params'] / mib:.2f} | {m['grads'] / mib:.2f} | "
                f"{m['optim'] / mib:.2f} | {m['total'] / mib:.2f} | {p['total'] / mib:.2f} | {m['total'] / p['total']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Memory per rank: DDP, ZeRO-1, ZeRO-2, FSDP2 vs the ZeRO paper.")
    parser.add_argument("--worlds", default="2,4", help="world sizes to run (one torchrun job each)")
    parser.add_argument("--preset", default="gpt2-tiny")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant before counting")
    parser.add_argument("--compare-steps", type=int, default=0,
                        help="also run zero2 and fsdp without reshard through the trainer for this many steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out-dir", default="docs/results/zero_memory_cpu")
    parser.add_argument("--runs-dir", default="runs/zero_memory", help="run folders of the comparison (not committed)")
    parser.add_argument("--out", help=argparse.SUPPRESS)  # worker: this rank-0 JSON
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)  # worker: run folders of the comparison
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # started by torchrun below
        return worker(args)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for world in [int(w) for w in args.worlds.split(",")]:
        out = out_dir / f"zero_memory_world{world}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
               sys.argv[0], "--preset", args.preset, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--steps", str(args.steps), "--compare-steps", str(args.compare_steps), "--device", args.device,
               "--out", str(out), "--run-dir", str(Path(args.runs_dir) / f"world{world}")]
        print("+ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
        result = json.loads(out.read_text())
        result["command"] = " ".join(cmd)
        out.write_text(json.dumps(result, indent=1))
        results.append(result)
    table = format_table(results)
    (out_dir / "table.md").write_text(table + "\n")
    print(table)
    for result in results:
        for row in result.get("compare", []):
            print(f"world {result['world_size']} {row['label']}: step {row['step_ms']['median']:.1f} ms, "
                  f"exposed comm {row['exposed_ms']['median']:.1f} ms, bytes/step {row['bytes_per_step']}")
    return 0
