"""The distributed ladder: a ladder file with `world: N` runs as ONE torchrun job of N ranks.

Every rung is a real training run through the trainer (`gptdist.studies.zero_memory.compare_run`: random
tokens, instrumented), one rung after the other in the same process group. Per rung: step time (median, p95
over ranks and steps after the skipped first ones), exposed communication, the recorder's bytes per step by
collective beside the analytic count (`analytic_bytes`), storage per rank (parameters, gradient buffers and
optimizer state counted from the tensors after the last step, `zero_memory.storage_bytes`) and the loss
after the last step. A rung marked `needs: nccl` is skipped off CUDA with its reason (gloo in torch 2.13
reduces bf16, so bf16 gradient communication runs on the CPU too).

A swept rung (`sweep:`, e.g. the bucket size) runs once per value; the value with the lowest median step
time is the rung (its row holds every point) and is carried into every later rung (`plan_ladder(chosen=)`).

Bytes follow nccl-tests' "size", as the recorder counts them (gptdist/instrument/recorder.py): the buffer of
an all-reduce, the whole gathered output of an all-gather, the whole input of a reduce-scatter, per rank
per step. With Ψ parameters of e bytes (4: fp32; the reduction in the rung's reduce dtype):
    manual, ddp, zero-1 gradients:  all_reduce     eΨ
    zero-2 gradients:               reduce_scatter eΨ
    zero-1, zero-2 parameters:      all_gather     4Ψ
    fsdp reshard_after_forward:     all_gather     4Ψ + 4Ψ_blocks, reduce_scatter eΨ
    fsdp without:                   all_gather     4Ψ, reduce_scatter eΨ
With reshard-after-forward every transformer block's group is gathered in forward and again in backward,
but the root group (wte = lm_head, wpe, ln_f: Ψ - Ψ_blocks) is not resharded after forward (FSDP2's
default for the root, gptdist/parallel/fsdp.py): its parameters are gathered once per step.
Ψ is counted without padding (zero pads each bucket, FSDP each parameter, to a multiple of N): the measured
bytes may exceed the analytic ones by that padding. On the wire a ring moves 2(N-1)/N of an all-reduce's size
and (N-1)/N of the others' per rank (busbw factors); the table gives sizes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from gptdist.config import build_config, resolve_model
from gptdist.errors import ConfigError
from gptdist.studies.ladder.spec import Ladder, config_view, plan_ladder

MIB = 2**20


def analytic_bytes(settings: dict[str, Any], numel: int, block_numel: int) -> dict[str, float]:
    """Collective sizes per rank per step that the rung's backend must issue for its gradients and
    parameters (module docstring); other collectives (loss average, norm) are not counted.
    numel: Ψ, every parameter once (tied ones once); block_numel: Ψ_blocks, those of the transformer blocks."""
    cfg = build_config(None, config_view(settings))
    backend = cfg.backend
    if backend in ("manual", "ddp"):
        return {"all_reduce": 4.0 * numel}
    if backend == "zero":
        z = cfg.parallel.zero
        grad_bytes = (2.0 if z.reduce_dtype == "bf16" else 4.0) * numel
        grads = {"all_reduce": grad_bytes} if z.stage == 1 else {"reduce_scatter": grad_bytes}
        return {**grads, "all_gather": 4.0 * numel}
    if backend == "fsdp":
        f = cfg.parallel.fsdp
        regathered = block_numel if f.reshard_after_forward else 0  # the blocks again in backward; not the root
        return {"all_gather": 4.0 * (numel + regathered), "reduce_scatter": (2.0 if f.reduce_dtype == "bf16" else 4.0) * numel}
    raise ConfigError(f"no analytic byte count for backend {backend!r}")


@dataclasses.dataclass
class DistLadderOptions:
    steps: int = 6  # timed steps per rung (after the instrument's skipped first steps)
    device: str = "cpu"


def best_point(points: list[dict[str, Any]]) -> int:
    """Index of the sweep point with the lowest median step time (the first of equals)."""
    return min(range(len(points)), key=lambda i: points[i]["step_ms"]["median"])


def _rung_overrides(settings: dict[str, Any], opts: DistLadderOptions, data: Path, skip: int) -> dict[str, Any]:
    return {**settings, "data.dir": str(data), "train.max_steps": opts.steps + skip, "train.warmup_steps": 1,
            "train.device": opts.device, "eval.val_every": 0, "eval.sample_every": 0, "checkpoint.at_end": False,
            "log.overwrite": True}


def worker(ladder: Ladder, opts: DistLadderOptions, run_dir: Path, out: Path) -> None:
    """Body of one torchrun rank: every rung in turn; rank 0 writes the raw result to `out`."""
    import torch.distributed as dist

    from gptdist.dist import init_distributed, teardown
    from gptdist.studies.zero_memory import _synthetic_data

    ctx = init_distributed(opts.device, timeout_s=600, need_group=True)
    try:
        planned = plan_ladder(ladder, ctx.device)
        chosen: dict[str, Any] = {}  # swept rung -> kept value
        first_cfg = build_config(None, config_view(planned[0].settings))
        data = run_dir / "data"
        if ctx.is_main:
            data.mkdir(parents=True, exist_ok=True)
            _synthetic_data(data, resolve_model(first_cfg).vocab_size)
        dist.barrier()
        rows = []
        for i in range(len(ladder.rungs)):
            p = plan_ladder(ladder, ctx.device, chosen=chosen)[i]  # with every earlier sweep's kept value
            row: dict[str, Any] = {
                "name": p.rung.name, "side": p.rung.side, "parent": p.rung.parent, "why": p.rung.why,
                "change": None if p.rung.change is None else {"key": p.rung.change[0], "value": p.rung.change[1]},
                "needs": p.rung.needs, "compare_to": p.compare_to, "settings": p.settings,
                "status": "skipped" if p.skip_reason else "ok", "reason": p.skip_reason,
            }
            if p.skip_reason is None and p.rung.sweep is None:
                row.update(_run_rung(p.rung.name, p.settings, opts, ctx, data, run_dir) or {})
            elif p.skip_reason is None:
                sweep = p.rung.sweep
                points = []
                for value in sweep.values:
                    settings = sweep.apply(p.settings, value)
                    measured = _run_rung(f"{p.rung.name}_{value}", settings, opts, ctx, data, run_dir)
                    points.append({"value": value, "settings": settings, **(measured or {})})
                if ctx.is_main:
                    best = best_point(points)
                    chosen[p.rung.name] = points[best]["value"]
                    row.update({k: v for k, v in points[best].items() if k != "value"})
                    row["change"] = {"key": sweep.key, "value": chosen[p.rung.name]}
                    row["sweep"] = {"key": sweep.key, "also": list(sweep.also), "chosen": chosen[p.rung.name],
                                    "rule": "lowest median step ms", "points": points}
                chosen_list = [chosen.get(p.rung.name)]
                dist.broadcast_object_list(chosen_list, src=0)  # every rank carries rank 0's choice
                chosen[p.rung.name] = chosen_list[0]
            rows.append(row)
        if ctx.is_main:
            out.write_text(json.dumps(_result(ladder, rows, opts, ctx.world_size), indent=1, default=str))
    finally:
        teardown()


def _run_rung(label: str, settings: dict[str, Any], opts: DistLadderOptions, ctx, data: Path,
              run_dir: Path) -> Optional[dict[str, Any]]:
    """One training run of a rung (or of a sweep point) through the trainer; rank 0 gets its row fields."""
    import torch.distributed as dist

    from gptdist.model import GPT
    from gptdist.studies.zero_memory import CudaPeak, compare_run, storage_bytes

    cfg = build_config(None, config_view(settings))
    model = GPT(resolve_model(cfg))
    numel = sum(t.numel() for t in model.parameters())
    block_numel = sum(t.numel() for t in model.transformer.h.parameters())

    peak = CudaPeak(ctx.device)

    def memory(trainer) -> list[dict[str, int]]:
        mine = storage_bytes(trainer.backend.raw_model, trainer.optimizer)
        if peak.read() is not None:  # CUDA: the allocator's peak over the whole run, transients included
            mine["cuda_peak_allocated"] = peak.read()
        per_rank: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(per_rank, mine)
        return per_rank

    skip = cfg.instrument.summary_skip_steps
    peak.start()
    measured = compare_run(label, _rung_overrides(config_view(settings), opts, data, skip), ctx, run_dir, after_fit=memory)
    if not ctx.is_main:
        return None
    return {"numel": numel, "block_numel": block_numel, "analytic_bytes_per_step": analytic_bytes(settings, numel, block_numel),
            "final_loss": measured["losses"][-1] if measured["losses"] else None, **measured}


def _result(ladder: Ladder, rows: list[dict[str, Any]], opts: DistLadderOptions, world: int) -> dict[str, Any]:
    from gptdist.provenance import hardware, provenance

    by_name = {r["name"]: r for r in rows}
    for r in rows:
        prev = by_name.get(r["compare_to"]) if r["compare_to"] else None
        if r["status"] == "ok" and prev is not None and prev["status"] == "ok":
            r["speedup_vs_previous"] = prev["step_ms"]["median"] / r["step_ms"]["median"]
            r["memory_saving_vs_previous_bytes"] = prev["memory"][0]["total"] - r["memory"][0]["total"]
            r["loss_difference_vs_previous"] = r["final_loss"] - prev["final_loss"]
    device = torch.device(opts.device)
    return {
        "benchmark": f"distributed ladder: training steps through the trainer at {world} ranks, random tokens",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": os.environ.get("GPTDIST_LADDER_COMMAND", ""),
        "ladder_file": ladder.source, "world_size": world, "options": dataclasses.asdict(opts),
        "hardware": hardware(device), "provenance": provenance(device),
        "bytes_definition": "nccl-tests sizes per rank per step (all-reduce buffer, all-gather output, "
                            "reduce-scatter input), recorder beside the analytic count (unpadded Ψ)",
        "memory_definition": "storage bytes per rank of parameters, gradient buffers and optimizer state "
                             "after the last step, counted from the tensors (zero_memory.storage_bytes)",
        "speedup_definition": "median step ms of the previous rung / this rung's",
        "rungs": rows,
    }


def launch(ladder_path: str, argv: list[str], world: int, out: Path, run_dir: Path) -> dict[str, Any]:
    """Start the torchrun job that runs the ladder (launch/ladder.py again, under torchrun) and read its result."""
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".json")
    script = Path(__file__).resolve().parents[3] / "launch" / "ladder.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
           str(script), *argv, "--worker-out", str(raw), "--run-dir", str(run_dir)]
    env = dict(os.environ, GPTDIST_LADDER_COMMAND=shlex.join(["python", "launch/ladder.py", *argv]))
    env.setdefault("OMP_NUM_THREADS", "1")
    subprocess.run(cmd, check=True, env=env)
    return json.loads(raw.read_text())
