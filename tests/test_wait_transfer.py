"""The wait/transfer split of collective time (gptdist/instrument/arrival.py)."""

from __future__ import annotations

import json

from gptdist.instrument.arrival import per_step_totals, split
from launchers import torchrun


def test_split_by_hand():
    """Rank 0 arrives at 0, rank 1 at 7 ms; the all-reduce ends at 10 ms on both: rank 0 waited 7 ms, both
    transferred 3 ms. A second collective with the same label in the step is matched by its order."""
    per_rank = {0: [(1, "all_reduce", "loss", 0.0, 10.0), (1, "all_reduce", "loss", 20.0, 21.0)],
                1: [(1, "all_reduce", "loss", 7.0, 10.0), (1, "all_reduce", "loss", 18.0, 21.0)]}
    first, second = split(per_rank)
    assert first["last_rank"] == 1 and first["wait_ms"] == {0: 7.0, 1: 0.0} and first["transfer_ms"] == {0: 3.0, 1: 3.0}
    assert second["last_rank"] == 0 and second["wait_ms"] == {0: 0.0, 1: 2.0} and second["transfer_ms"] == {0: 1.0, 1: 1.0}
    assert per_step_totals([first, second]) == {0: {1: (7.0, 4.0)}, 1: {1: (2.0, 4.0)}}


def test_a_late_rank_shows_as_the_others_wait(tmp_path):
    """Rank 1 sleeps 1 s before each loss all-reduce: rank 0's collective time is mostly waiting (at least
    half the 1 s: the clocks are aligned at the start-up barrier, whose exit skew on a busy machine can
    reach a few hundred ms), rank 1, the last to arrive, waits 0."""
    torchrun(["tests/dist_scripts/wait_split.py", "--out", str(tmp_path), "--sleep", "1.0"], nproc=2, timeout=300)
    summary = json.loads((tmp_path / "summary.json").read_text())
    per_rank = summary["per_rank"]
    assert per_rank["0"]["wait_ms"]["median"] >= 500
    assert per_rank["0"]["wait_ms"]["median"] > per_rank["0"]["transfer_ms"]["median"]  # the sleep is wait, not transfer
    assert per_rank["1"]["wait_ms"]["median"] == 0
    assert "barrier" in summary["clock_sync"]
    rows = [json.loads(x) for x in (tmp_path / "collectives_split.jsonl").read_text().splitlines()]
    assert [(r["step"], r["label"], r["last_rank"]) for r in rows] == [(1, "loss", 1), (2, "loss", 1), (3, "loss", 1)]
