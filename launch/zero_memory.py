"""Memory per rank of DDP, ZeRO-1, ZeRO-2 and FSDP2 against the ZeRO paper's accounting, at 2 and 4 ranks
(one torchrun job each), plus the handwritten ZeRO-2 vs FSDP2 without reshard through the trainer.

    OMP_NUM_THREADS=1 python launch/zero_memory.py --worlds 2,4 --compare-steps 8 --out-dir docs/results/zero_memory_cpu

Logic and the accounting: gptdist/studies/zero_memory.py; how to read it: docs/backends.md ("zero").
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptdist.cli import exit_now  # noqa: E402
from gptdist.studies.zero_memory import main  # noqa: E402

if __name__ == "__main__":
    exit_now(main())
