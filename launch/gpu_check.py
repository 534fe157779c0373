"""Confirm the GPU measurement path on one GPU (<= 8 minutes on an H100/H200, no network):

    python launch/gpu_check.py --out runs/gpu_check          # CUDA
    python launch/gpu_check.py --cpu --out /tmp/rehearsal    # the CPU rehearsal (what CI runs)

Prints a pass/fail table and writes <out>/gpu_check.json; legs in gptdist/gpu_check.py. Exit 1 if a leg failed."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.gpu_check import run_check  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu_check", help="output folder (must not hold a previous check)")
    p.add_argument("--cpu", action="store_true", help="the CPU rehearsal (gloo, tiny shapes)")
    p.add_argument("--leg-timeout", type=float, default=240.0, help="seconds per subprocess (default 240)")
    p.add_argument("--legs", default=None, help="comma list of legs to run (default all)")
    args = p.parse_args()
    out = Path(args.out)
    if (out / "gpu_check.json").exists():
        p.error(f"{out} already holds a check (gpu_check.json): pick a new --out")
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device: run with --cpu for the CPU rehearsal")
    results = run_check(out, cuda=not args.cpu, timeout_s=args.leg_timeout, legs=args.legs.split(",") if args.legs else None)
    return 1 if any(r["status"] != "pass" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
