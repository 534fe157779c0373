"""Compute vs communication per rank from a Chrome trace (rank or merged), on CPU/gloo or GPU traces.

    python launch/analyze_trace.py traces/<run>/merged.json
    python launch/analyze_trace.py traces/<run>/merged.json --run runs/<run>   # also the live recorder's
                                                                              # numbers for the same steps
Prints one row per rank (ms over the profiled steps); --json prints the numbers as JSON instead.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard, make_parser  # noqa: E402
from gptdist.errors import ConfigError  # noqa: E402
from gptdist.instrument.profiler import load_trace  # noqa: E402
from gptdist.instrument.trace_analysis import analyze_trace, live_totals, profiled_steps  # noqa: E402

COLUMNS = ("window_ms", "compute_ms", "comm_ms", "overlapped_ms", "exposed_ms", "idle_ms")


def main(argv: list[str]) -> None:
    p = make_parser(__doc__)
    p.add_argument("trace", help="a rank{r}.json or merged.json (optionally .gz)")
    p.add_argument("--run", help="the run folder, to compare with its ranks/rank{r}/steps.jsonl")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON instead of a table")
    args = p.parse_args(argv)
    if not Path(args.trace).is_file():
        raise ConfigError(f"trace not found: {args.trace}")
    try:
        trace = load_trace(args.trace)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{args.trace} is not a Chrome trace JSON file: {e}") from None
    result = {rank: b.to_dict() for rank, b in analyze_trace(trace).items()}
    if not result:
        raise ConfigError(f"{args.trace}: no ProfilerStep ranges (not a torch.profiler trace?)")
    steps = profiled_steps(trace)
    live = live_totals(Path(args.run), sorted(result), steps) if args.run else {}
    if args.json:
        print(json.dumps({"steps": steps, "trace": result, "live": live}, indent=2))
        return
    print(f"{args.trace}: steps {steps}, source {next(iter(result.values()))['source']} (ms summed over the steps)")
    print("rank  " + "  ".join(f"{c:>13}" for c in COLUMNS))
    for rank, row in result.items():
        print(f"{rank:>4}  " + "  ".join(f"{row[c]:13.2f}" for c in COLUMNS))
        if rank in live:
            print(" live " + "  ".join(f"{live[rank].get(c, float('nan')):13.2f}" for c in COLUMNS))


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
