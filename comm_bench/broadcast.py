"""Broadcast (root 0) sweep over message sizes, like nccl-tests' broadcast_perf.

    torchrun --standalone --nproc-per-node 4 comm_bench/broadcast.py -b 1K -e 64M -d fp32
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 comm_bench/broadcast.py -b 8 -e 1G

Flags (-b, -e, -f, -w, -n, -d, --inplace/--out-of-place, -a, --out): `--help` or docs/comm_bench.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make comm_bench and gptdist importable

from comm_bench.harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("broadcast"))
