"""Loss curves of gptdist runs: train and validation loss against step, tokens, epochs and training time.

    python launch/plot_runs.py runs/a runs/b --out docs/figures/ab --smooth 0.9 --logx

Writes <out>.png and <out>.svg. The logic lives in gptdist/studies/run_plots.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard  # noqa: E402
from gptdist.studies.run_plots import main  # noqa: E402

if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
