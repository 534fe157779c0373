"""How much slower the ranks of each multi-rank run computed than the model of record said, per repeat, next to
the lock-step probe's contention measured at the start of that repeat.

    python docs/results/cluster_simulator_sized_repeats_cpu_netns/compute_ratio.py docs/results/cluster_simulator_sized_repeats_cpu_netns

The model of record replays each run's rehearsal (rank 0's own work at N ranks, measured alone just before and just
after that backend's part of the study) with the contention from the core count: 1 for 2 ranks on 2 cores, 2 for
4. measured / predicted compute is then the contention the real ranks saw beyond that (1.00 = as the formula).
"""

import json
import sys
from pathlib import Path


def main(folder: Path) -> None:
    print("| repeat | lock-step 2 / 4 | mode | backend | layout | measured compute ms | predicted | ratio | step error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for repeat in sorted(folder.glob("repeat*")):
        if not (repeat / "validation" / "validation.json").is_file():
            continue  # not measured (yet)
        lockstep = (repeat / "contention_lockstep.txt").read_text().strip()
        rows = json.loads((repeat / "validation" / "validation.json").read_text())["rows"]
        for r in rows:
            if r["world"] == 1:
                continue
            ratio = r["measured_compute_ms"] / r["predicted_compute_ms"]
            print(f"| {repeat.name} | {lockstep} | {r['mode']} | {r['backend']} | {r['layout']} | "
                  f"{r['measured_compute_ms']:.1f} | {r['predicted_compute_ms']:.1f} | {ratio:.2f} | {100 * r['error']:+.1f}% |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
