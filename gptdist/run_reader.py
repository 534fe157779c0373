"""Reading a finished run folder (the one reader the studies share; gptdist/run_dir.py writes them).

    runs/<run>/config.yaml                 the resolved config
    runs/<run>/ranks/rank{r}/steps.jsonl   one row per step per rank (instrument.enabled)

THE STEP PERIOD. A row's `step_ms` times the step itself; the period is the time from the previous step's
end to this one's (`end_unix_s` of consecutive rows), so it also holds the work between steps (logging,
evaluation hooks): what tokens/s sees. Rows without `end_unix_s` (older runs), and a rank's first row, use
step_ms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptdist.config import MOVED_PARALLEL_KEYS, Config, build_config, load_yaml
from gptdist.errors import ConfigError


def read_rank_rows(run_dir: str | Path) -> dict[int, list[dict]]:
    """{rank: rows of ranks/rank{r}/steps.jsonl, sorted by step, each with `period_ms` (the step period)}."""
    run_dir = Path(run_dir)
    rank_dirs = sorted((run_dir / "ranks").glob("rank*"))
    if not rank_dirs:
        raise ConfigError(f"{run_dir}: no ranks/rank*/steps.jsonl (was instrumentation on?)")
    out = {}
    for d in rank_dirs:
        lines = (d / "steps.jsonl").read_text().splitlines() if (d / "steps.jsonl").is_file() else []
        out[int(d.name.removeprefix("rank"))] = with_step_periods([json.loads(line) for line in lines if line.strip()])
    return out


def with_step_periods(rows: list[dict]) -> list[dict]:
    """One rank's rows sorted by step, each with `period_ms` added (the module docstring)."""
    end_of = {r["step"]: r.get("end_unix_s") for r in rows}
    out = []
    for r in sorted(rows, key=lambda r: r["step"]):
        before = end_of.get(r["step"] - 1)
        has_both = before is not None and r.get("end_unix_s") is not None
        out.append({**r, "period_ms": (r["end_unix_s"] - before) * 1e3 if has_both else r["step_ms"]})
    return out


def read_run_config(run_dir: str | Path) -> Config | None:
    """The run's config (None when it has no config.yaml). A run written before each backend had its own
    `parallel.<name>` subsection is read with its flat keys moved to their new places."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    data: dict[str, Any] = load_yaml(path)
    parallel = data.get("parallel") or {}
    upgraded: dict[str, dict] = {}
    for key, value in parallel.items():
        if key in MOVED_PARALLEL_KEYS:
            _, backend, name = MOVED_PARALLEL_KEYS[key].split(".")
            upgraded.setdefault(backend, {})[name] = value
        else:
            upgraded.setdefault(key, {}).update(value or {})
    if parallel:
        data["parallel"] = upgraded
    return build_config(None, data)
