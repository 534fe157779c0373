"""Metric sinks: JSONL always; TensorBoard and W&B (offline, no network) when switched on."""

import json

from gptdist.instrument.sinks import MetricsLogger


def test_jsonl_tensorboard_and_wandb_receive_the_same_values(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the sink must choose offline by itself
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=True, wandb=True, run_name="t", config={"a": 1})
    for step in (1, 2, 3):
        logger.log("train", step, {"loss": 10.0 / step, "mfu": None})
    logger.log("val", 3, {"loss": 2.5})
    logger.close()

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"], r["loss"]) for r in rows] == [
        ("train", 1, 10.0), ("train", 2, 5.0), ("train", 3, 10.0 / 3), ("val", 3, 2.5)
    ]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("train/loss")] == [(1, 10.0), (2, 5.0), (3, 3.33333)]
    assert [e.value for e in events.Scalars("val/loss")] == [2.5]
    assert "train/mfu" not in events.Tags()["scalars"]  # None values are skipped, not logged as 0

    # Offline W&B never waits on the network: proven by the run it wrote being an offline one (event-based,
    # not a wall-clock bound, which a busy machine breaks).
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))


def test_non_main_ranks_write_nothing(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=False, tensorboard=True)
    logger.log("train", 1, {"loss": 1.0})
    logger.close()
    assert list(tmp_path.iterdir()) == []
