"""The NCCL stall watchdog (gptdist/instrument/watchdog.py), driven on CPU by a fake loop status: the host
thread must speak within the collective timeout, once, naming rank, step, phase and the collective."""

from __future__ import annotations

import threading

from gptdist.instrument.watchdog import StallWatchdog


def run_until_fired(status, tmp_path, timeout_s=0.5):
    exited = threading.Event()
    codes = []

    def fake_exit(code):
        codes.append(code)
        exited.set()

    dog = StallWatchdog(rank=1, timeout_s=timeout_s, status=status, rank_dir=tmp_path / "rank1",
                        log=lambda line: None, exit=fake_exit, poll_s=0.02).start()
    return dog, exited, codes


def test_a_stalled_collective_gives_one_line_and_exits(tmp_path):
    status = lambda: (12, "loss all-reduce", "all_reduce loss (0.0 MB)")  # noqa: E731  no progress, op in flight
    dog, exited, codes = run_until_fired(status, tmp_path)
    assert exited.wait(60)
    line = (tmp_path / "rank1" / "stall.txt").read_text().strip()
    assert line.startswith("rank 1: stalled at step 12 during loss all-reduce, waiting on all_reduce loss (0.0 MB)")
    assert "\n" not in line and "timeout 0.5 s" in line
    assert codes == [1]
    dog.stop()


def polled(n, answer):
    """A status that answers `answer` and sets an event once the watchdog has looked n times."""
    calls, seen = [0], threading.Event()

    def status():
        calls[0] += 1
        if calls[0] >= n:
            seen.set()
        return answer() if callable(answer) else answer
    return status, seen


def test_no_collective_in_flight_is_not_a_stall(tmp_path):
    """A long evaluation or checkpoint issues no recorded collective: the watchdog stays quiet. It looked
    50 times, 0.02 s apart: ten times its 0.09 s limit (90% of the 0.1 s timeout) went by."""
    status, seen = polled(50, (12, "between steps", None))
    dog, exited, _ = run_until_fired(status, tmp_path, timeout_s=0.1)
    assert seen.wait(120)
    assert not exited.is_set()
    dog.stop()
    assert not (tmp_path / "rank1" / "stall.txt").exists()


def test_progress_resets_the_clock(tmp_path):
    """The phase keeps changing (a healthy loop): no stall, however long it runs."""
    phases = iter(range(10**9))
    status, seen = polled(50, lambda: (1, f"phase {next(phases)}", "all_reduce bucket=0 (1.0 MB)"))
    dog, exited, _ = run_until_fired(status, tmp_path, timeout_s=0.1)
    assert seen.wait(120)
    assert not exited.is_set()
    dog.stop()
