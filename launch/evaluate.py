"""Evaluate a model: validation loss, HellaSwag, LAMBADA.

    python launch/evaluate.py --hf gpt2 --tasks hellaswag,lambada --device cuda --json runs/gpt2_eval.json
    torchrun --nproc-per-node 8 launch/evaluate.py --checkpoint runs/x/ckpt --tasks val,hellaswag --data-dir data/fineweb
    python launch/evaluate.py --random-init gpt2-tiny --tasks hellaswag --limit 100   # chance-level baseline

Under torchrun the items (and val batches) are spread over the ranks and the counts reduced: the
numbers equal a single-process run. See docs/evaluation.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptdist.cli import main_guard, make_parser  # noqa: E402
from gptdist.errors import GptdistError  # noqa: E402
from gptdist.evals.runner import add_model_source_args  # noqa: E402


def parse_args(argv):
    p = make_parser(__doc__)
    add_model_source_args(p)
    p.add_argument("--tasks", default="hellaswag,lambada", help="comma-separated: val, hellaswag, lambada")
    p.add_argument("--limit", type=int, default=0, help="first N HellaSwag items / LAMBADA passages (0 = all: 10,042 and 5,153, tens of minutes on a "
                        "2-core CPU; use e.g. --limit 500 there)")
    p.add_argument("--data-dir", help="token shards for 'val' (launch/prepare_data.py output)")
    p.add_argument("--batch-size", type=int, default=8, help="val: sequences per batch")
    p.add_argument("--seq-len", type=int, default=0, help="val: tokens per sequence (0 = the model's block_size)")
    p.add_argument("--val-batches", type=int, default=20, help="val: number of batches (split over ranks)")
    p.add_argument("--items-per-forward", type=int, default=1, help="HellaSwag items per forward (4 rows each)")
    p.add_argument("--hellaswag-file", help="HellaSwag jsonl (default: mirror copy, else official download)")
    p.add_argument("--lambada-file", help="LAMBADA jsonl (default: mirror copy, else OpenAI's download)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    p.add_argument("--dtype", default="auto", help="auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16 (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="init seed for --random-init")
    p.add_argument("--json", help="write the results (and how they were made) to this file (rank 0)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from gptdist.dist import init_distributed, teardown
    from gptdist.evals.common import autocast_factory
    from gptdist.evals.runner import load_model_for_eval, parse_tasks, run_eval_tasks
    from gptdist.tokenizer import get_tokenizer

    from gptdist.dtypes import check_dtype_name

    try:
        check_dtype_name(args.dtype, ("auto", "fp32", "bf16"), "--dtype")
        tasks = parse_tasks(args.tasks)
        ctx = init_distributed(args.device)
        enc = get_tokenizer()
        model = load_model_for_eval(args.checkpoint, args.hf, args.random_init, ctx.device, args.seed)
        results = run_eval_tasks(
            model, tasks, ctx, enc,
            data_dir=args.data_dir, batch_size=args.batch_size, seq_len=args.seq_len or None,
            val_batches=args.val_batches, limit=args.limit,
            hellaswag_path=args.hellaswag_file, lambada_path=args.lambada_file,
            items_per_forward=args.items_per_forward,
            autocast=autocast_factory(ctx.device, args.dtype), progress=not args.no_progress,
        )
    except GptdistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        teardown()
        return 2
    if ctx.is_main:
        from gptdist.evals.references import reference_line

        for task, r in results.items():
            print(f"{task}: " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
            print(reference_line(task))
        if args.json:
            import torch

            from gptdist.provenance import provenance

            record = {
                "results": results,
                "model": {"checkpoint": args.checkpoint, "hf": args.hf, "random_init": args.random_init},
                "world_size": ctx.world_size,
                "device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else platform.processor() or "cpu",
                "torch": torch.__version__,
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                "date": datetime.date.today().isoformat(),
                "provenance": provenance(ctx.device),
            }
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    teardown()
    return 0


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
