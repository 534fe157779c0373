"""Single-device training throughput of the trainer's step (gptdist/train_step.py: forward + backward +
gradient clipping + AdamW with parameter groups; per-block compile with --compile) on random tokens.

    python launch/bench_throughput.py --n-layer 4 --n-head 4 --n-embd 256 --seq-len 256 --batch-size 8 \
        --vocab-size 50304 --dtype fp32 --threads 2 --out docs/results/throughput_cpu_tiny

Each step is timed on its own (CUDA synchronised before each clock read) after `warmup` untimed steps;
we report the median step time with p10/p90 and the interquartile range, tokens/s at the median, and MFU
where the device's peak is known (`gptdist.flops`). Data loading is excluded: the same random batch is
used every step.

`--reference path/to/model.py` times a second, nanoGPT-style model file (a module with `GPT` and
`GPTConfig`, forward(idx, targets) -> (logits, loss)) of the same shape with the same harness. The two
are run interleaved, round by round (ours, theirs, ours, theirs, ...), so that a noisy machine slows
both alike; compare them by the per-round ratio, not by absolute numbers from different moments.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional


import torch

from gptdist.cli import make_parser
from gptdist.dtypes import DTYPES
from gptdist.config import Config
from gptdist.dist import DistContext, synchronize
from gptdist.errors import GptdistError
from gptdist.flops import flops_per_token, mfu, param_count, peak_flops
from gptdist.model import GPT, PRESETS, GPTConfig
from gptdist.provenance import hardware, provenance, readme_header
from gptdist.train_step import TrainStep



@dataclass
class BenchSettings:
    model: GPTConfig
    batch_size: int
    seq_len: int
    dtype: str = "fp32"
    compile: bool = False
    steps: int = 20
    warmup: int = 3
    rounds: int = 1
    device: str = "auto"
    threads: Optional[int] = None
    peak_flops: Optional[float] = None
    seed: int = 0
    fused_adamw: str = "auto"  # "auto" (fused on CUDA), "on", "off": gptdist.optim.use_fused
    tf32: Optional[bool] = None  # TF32 matmuls on CUDA, set before each run; None: leave torch's setting


class TimedTrainStep:
    """The trainer's step (gptdist/train_step.py: per-block compile, AdamW parameter groups, clipping) on one
    device, without distribution, on a fixed random batch; `run(n)` returns n step times in milliseconds."""

    def __init__(self, model: torch.nn.Module, settings: BenchSettings, device: torch.device):
        self.device = device
        self.settings = settings
        cfg = Config()  # defaults: the trainer's lr, betas, weight decay, grad_clip; backend none
        cfg.train.dtype, cfg.train.compile, cfg.train.fused_adamw = settings.dtype, settings.compile, settings.fused_adamw
        ctx = DistContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=device, backend=None)
        self.step_fn = TrainStep(model.to(device), cfg, ctx)
        self.model, self.optimizer = self.step_fn.backend.module, self.step_fn.optimizer
        self.lr = cfg.train.lr
        g = torch.Generator().manual_seed(settings.seed)
        data = torch.randint(0, settings.model.vocab_size, (settings.batch_size, settings.seq_len + 1), generator=g)
        self.batch = (data[:, :-1].contiguous().to(device), data[:, 1:].contiguous().to(device))  # (B, T) each
        self.last_loss = float("nan")

    def apply_global_flags(self) -> None:
        """TF32 is process-global state in torch: set it for this runner before its steps run, so that
        runners with different settings can take turns in one process."""
        if self.settings.tf32 is not None and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.settings.tf32
            torch.backends.cudnn.allow_tf32 = self.settings.tf32

    def step(self) -> None:
        loss, _ = self.step_fn.run(lambda: self.batch, self.lr)
        self.last_loss = loss.item()  # also a sync point: the step has really finished

    def run(self, n: int) -> list[float]:
        self.apply_global_flags()
        times = []
        for _ in range(n):
            synchronize(self.device)
            start = time.perf_counter()
            self.step()
            synchronize(self.device)
            times.append((time.perf_counter() - start) * 1e3)
        return times


def summarize(times_ms: list[float], tokens_per_step: int, fpt: int, peak: Optional[float]) -> dict:
    q = statistics.quantiles(times_ms, n=20, method="inclusive")  # 5 % steps: q[1] = p10, q[17] = p90
    quart = statistics.quantiles(times_ms, n=4, method="inclusive")
    median = statistics.median(times_ms)
    tokens_per_s = tokens_per_step / (median / 1e3)
    return {
        "steps_timed": len(times_ms),
        "step_ms_median": median,
        "step_ms_p10": q[1],
        "step_ms_p90": q[17],
        "step_ms_iqr": quart[2] - quart[0],
        "step_ms_min": min(times_ms),
        "step_ms_max": max(times_ms),
        "tokens_per_s": tokens_per_s,
        "achieved_tflops": tokens_per_s * fpt / 1e12,
        "mfu": mfu(tokens_per_s, fpt, peak),
    }


def load_reference(path: str) -> tuple[Callable[[GPTConfig], torch.nn.Module], str]:
    """A nanoGPT-style model.py -> a factory building its GPT from our config's shape."""
    file = Path(path)
    if not file.is_file():
        raise GptdistError(f"reference model file {path} does not exist")
    spec = importlib.util.spec_from_file_location("reference_model", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up here while the file executes
    spec.loader.exec_module(module)
    if not hasattr(module, "GPT") or not hasattr(module, "GPTConfig"):
        raise GptdistError(f"{path} defines no GPT and GPTConfig (expected a nanoGPT-style model.py)")

    def build(cfg: GPTConfig) -> torch.nn.Module:
        ref_cfg = module.GPTConfig(
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
            vocab_size=cfg.vocab_size, dropout=cfg.dropout, bias=cfg.bias,
        )
        with contextlib.redirect_stdout(sys.stderr):  # nanoGPT prints its parameter count
            return module.GPT(ref_cfg)

    return build, str(file)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptdistError("--device cuda asked for, but torch sees no CUDA device")
    return device


def run_benchmark(settings: BenchSettings, reference: Optional[str] = None, log=print) -> dict:
    """Time our GPT (and optionally a reference model file) with one harness; returns the result dict."""
    cfg = settings.model
    if cfg.n_embd % cfg.n_head:
        raise GptdistError(f"n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
    if settings.seq_len > cfg.block_size:
        raise GptdistError(f"seq_len {settings.seq_len} exceeds block_size {cfg.block_size}")
    if settings.steps < 1 or settings.rounds < 1 or settings.steps * settings.rounds < 2 or settings.warmup < 0:
        raise GptdistError("need steps >= 1, rounds >= 1, steps * rounds >= 2 and warmup >= 0")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    peak = peak_flops(device, DTYPES[settings.dtype], override=settings.peak_flops)
    fpt = flops_per_token(cfg, settings.seq_len)
    tokens_per_step = settings.batch_size * settings.seq_len

    builders: dict[str, Callable[[GPTConfig], torch.nn.Module]] = {"gptdist": GPT}
    reference_path = None
    if reference:
        builders["reference"], reference_path = load_reference(reference)
    runners = {}
    for name, build in builders.items():
        torch.manual_seed(settings.seed)
        model = build(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        if n_params != param_count(cfg):
            log(f"note: {name} has {n_params:,} parameters, our formula says {param_count(cfg):,}")
        runners[name] = TimedTrainStep(model, settings, device)

    for name, runner in runners.items():
        runner.run(settings.warmup)  # compile, allocator and thread-pool warm-up; not timed
    per_round: list[dict[str, list[float]]] = []
    for r in range(settings.rounds):
        this_round = {}
        # Interleaved, and the order flips every round (ours-theirs, theirs-ours, ...) so that a load that
        # rises or falls over time favours neither model.
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            this_round[name] = runners[name].run(settings.steps)
            log(f"round {r + 1}/{settings.rounds} {name:9s} median {statistics.median(this_round[name]):8.2f} ms")
        per_round.append({name: this_round[name] for name in runners})

    results = {}
    for name in runners:
        all_times = [t for rnd in per_round for t in rnd[name]]
        results[name] = summarize(all_times, tokens_per_step, fpt, peak)
        results[name]["round_medians_ms"] = [statistics.median(rnd[name]) for rnd in per_round]
        results[name]["final_loss"] = runners[name].last_loss
        results[name]["params"] = sum(p.numel() for p in runners[name].model.parameters())
    comparison = None
    if "reference" in runners:
        ratios = [statistics.median(rnd["gptdist"]) / statistics.median(rnd["reference"]) for rnd in per_round]
        comparison = {
            "ratio_definition": "median step time gptdist / reference, per round (< 1: gptdist faster)",
            "per_round": ratios,
            "median": statistics.median(ratios),
            "quartiles": statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3,
            "min": min(ratios),
            "max": max(ratios),
        }

    return {
        "benchmark": "train step (forward + backward + AdamW) on random tokens, one device",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *(shlex.quote(a) for a in sys.argv)]),
        "hardware": hardware(device),
        "provenance": provenance(device),
        "settings": {**{k: v for k, v in asdict(settings).items() if k != "model"}, "model": asdict(cfg)},
        "tokens_per_step": tokens_per_step,
        "flops_per_token": fpt,
        "flops_formula": "6*N + 12*L*H*Q*T (PaLM appendix B), N = params without wpe",
        "peak_flops": peak,
        "mfu_note": None if peak else "no peak FLOP/s known for this device (CPU): MFU not reported; see --peak-flops",
        "reference_file": reference_path,
        "results": results,
        "comparison": comparison,
    }


def to_markdown(result: dict, notes: list[str]) -> str:
    s, hw, m = result["settings"], result["hardware"], result["settings"]["model"]
    lines = [
        "# Training-step throughput, one device",
        "",
        readme_header(result["provenance"]).rstrip("\n"),
        f"- CPUs usable {hw['cpus_usable']} of {hw['cpu_count']}, torch threads {hw['torch_threads']}",
        f"- model: n_layer {m['n_layer']}, n_head {m['n_head']}, n_embd {m['n_embd']}, vocab {m['vocab_size']}, "
        f"bias {m['bias']}, attention {m['attention']}; B {s['batch_size']}, T {s['seq_len']}, {s['dtype']}, "
        f"compile {s['compile']}",
        f"- timing: {s['warmup']} warm-up steps, then {s['rounds']} round(s) x {s['steps']} timed steps per model"
        + (", interleaved" if result["comparison"] else ""),
        f"- FLOPs/token: {result['flops_per_token']:,} ({result['flops_formula']})",
        "",
        "| model | params | median step ms | p10 | p90 | IQR | tokens/s | model TFLOP/s | MFU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["results"].items():
        mfu_text = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
        lines.append(
            f"| {name} | {r['params']:,} | {r['step_ms_median']:.1f} | {r['step_ms_p10']:.1f} | {r['step_ms_p90']:.1f} "
            f"| {r['step_ms_iqr']:.1f} | {r['tokens_per_s']:,.0f} | {r['achieved_tflops']:.3f} | {mfu_text} |"
        )
    if result["comparison"]:
        c = result["comparison"]
        per_round = ", ".join(f"{x:.3f}" for x in c["per_round"])
        lines += [
            "",
            f"Ratio ({c['ratio_definition']}): median **{c['median']:.3f}**, "
            f"quartiles {c['quartiles'][0]:.3f} / {c['quartiles'][2]:.3f}, range {c['min']:.3f} to {c['max']:.3f}; "
            f"per round: {per_round}.",
        ]
    if result["mfu_note"]:
        lines += ["", f"MFU: {result['mfu_note']}."]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = make_parser(__doc__)
    p.add_argument("--preset", default="gpt2-tiny", choices=sorted(PRESETS), help="shape to start from")
    p.add_argument("--n-layer", type=int, help="override the preset's n_layer")
    p.add_argument("--n-head", type=int, help="override the preset's n_head")
    p.add_argument("--n-embd", type=int, help="override the preset's n_embd")
    p.add_argument("--vocab-size", type=int, help="override the preset's vocab_size")
    p.add_argument("--seq-len", "-T", type=int, help="T (default: the preset's block_size)")
    p.add_argument("--batch-size", "-B", type=int, default=8, help="sequences per step")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="the trainer's train.dtype: bf16 runs under autocast")
    p.add_argument("--attention", choices=["sdpa", "naive"], help="override the preset's attention")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute each block in backward")
    p.add_argument("--no-bias", action="store_true", help="no biases in Linear/LayerNorm")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block, as train.compile does")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds (with --reference: many short rounds, e.g. --steps 1 --rounds 30)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--peak-flops", type=float, help="peak FLOP/s for MFU where the table has none (e.g. a CPU)")
    p.add_argument("--reference", help="a nanoGPT-style model.py to time with the same harness")
    p.add_argument("--seed", type=int, default=0, help="init and batch seed")
    p.add_argument("--out", help="write OUT.json and OUT.md")
    p.add_argument("--note", action="append", default=[], help="a line for the Notes section of OUT.md")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    base = asdict(PRESETS[args.preset])
    for key in ("n_layer", "n_head", "n_embd", "vocab_size", "attention"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    base["activation_checkpointing"] = args.activation_checkpointing
    base["bias"] = not args.no_bias
    base["dropout"] = 0.0
    seq_len = args.seq_len or base["block_size"]
    base["block_size"] = max(base["block_size"], seq_len)
    for key in ("n_layer", "n_head", "n_embd", "vocab_size"):
        if base[key] <= 0:
            raise GptdistError(f"--{key.replace('_', '-')} must be positive, got {base[key]}")
    if args.batch_size <= 0 or seq_len <= 0:
        raise GptdistError("--batch-size and --seq-len must be positive")
    return BenchSettings(
        model=GPTConfig(**base), batch_size=args.batch_size, seq_len=seq_len, dtype=args.dtype,
        compile=args.compile, steps=args.steps, warmup=args.warmup, rounds=args.rounds, device=args.device,
        threads=args.threads, peak_flops=args.peak_flops, seed=args.seed,
    )


def write_outputs(out: Path, result: dict, markdown: str) -> Path:
    """`<out>.json` (every number) and `<out>.md` (the report); the folder is created. Returns `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        result = run_benchmark(settings, reference=args.reference, log=lambda msg: print(msg, file=sys.stderr))
    except GptdistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["notes"] = args.note
    markdown = to_markdown(result, args.note)
    print(markdown)
    if args.out:
        out = write_outputs(Path(args.out), result, markdown)
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0
