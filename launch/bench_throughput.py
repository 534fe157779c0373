"""Single-device training throughput (forward + backward + AdamW on random tokens).

    python launch/bench_throughput.py --n-layer 4 --n-head 4 --n-embd 256 -T 256 -B 8 --vocab-size 50304

See gptdist/studies/throughput.py for what is timed and how; `--help` for the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard  # noqa: E402
from gptdist.studies.throughput import main  # noqa: E402

if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
