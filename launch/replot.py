"""Draw a results folder's figures again from its raw JSON (results.json, predicted.json, validation.json).

    python launch/replot.py docs/results/scaling_cpu_gloo
    python launch/replot.py docs/results/simulator_h100_assumed --title " (GPT-2 124M, modelled H100 timeline)"
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard, make_parser  # noqa: E402


def main(argv: list[str]) -> None:
    p = make_parser(__doc__)
    p.add_argument("folder", type=Path, help="a results folder")
    p.add_argument("--title", default="", help="note appended to the titles (as given to simulate.py --title)")
    args = p.parse_args(argv)
    from gptdist.studies.plotting import replot_results

    paths, skipped = replot_results(args.folder, args.title)
    for path in paths:
        print(f"wrote {path}")
    for why in skipped:
        print(f"skipped {why}")


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
