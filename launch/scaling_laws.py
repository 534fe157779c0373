"""Scaling laws (loss against N, D and C): plan, run and fit a Chinchilla-style sweep.

    python launch/scaling_laws.py vocab --data data/fineweb-legal --out data/fineweb-legal-top1024 --keep 1024
    python launch/scaling_laws.py plan configs/scaling_laws/cpu_fineweb.yaml --out runs/laws
    python launch/scaling_laws.py run configs/scaling_laws/cpu_fineweb.yaml --out runs/laws
    python launch/scaling_laws.py report --out runs/laws --to docs/results/scaling_laws_cpu

See docs/scaling_laws.md. The logic lives in gptdist/studies/scaling_laws/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard  # noqa: E402
from gptdist.studies.scaling_laws.cli import main  # noqa: E402

if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
