"""The optimisation ladder: one change at a time, each speed-up measured and profiled.

    python launch/ladder.py --config configs/ladder/default.yaml --out runs/ladder/gpt2
    python launch/ladder.py --config configs/ladder/cpu_tiny.yaml --threads 2 --out runs/ladder/cpu

See gptdist/studies/ladder/ for what is measured and docs/ladder.md for how to read the results.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard  # noqa: E402
from gptdist.studies.ladder import main  # noqa: E402

if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
