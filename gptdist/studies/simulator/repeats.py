"""The simulator's error over repeated sittings: each repeat measured its own inputs (1-rank timelines,
comm tables) and its own study, then `launch/simulate.py validate` wrote a validation.json (or one per run,
each run predicted from the inputs measured around it: the repeat's parts, taken together). This gathers
them: per (mode, backend, layout) the error of every repeat (with its measured and predicted step), its mean,
min and max, and mean |error| and largest |error| overall, per backend and per link (one node, or a layout
across nodes such as 2x1); and the control: the study's 1-rank runs, which replay the same job's 1-rank runs
measured around them, so that their error is the machine's drift in the sitting."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from gptdist.errors import ConfigError


def _repeat_rows(parts: list[Path]) -> list[dict]:
    """One repeat's rows: of one validation.json, or of several (a repeat validated in parts, e.g. each run
    from the inputs measured around it), which must not predict the same (mode, backend, layout) twice."""
    rows, seen = [], {}
    for path in parts:
        try:
            part = json.loads(Path(path).read_text())["rows"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not a validation.json (launch/simulate.py validate --out): {e}") from None
        keys = {(r["mode"], r["backend"], r["layout"]) for r in part}
        twice = sorted(keys & set(seen), key=str)
        if twice:
            raise ConfigError(f"{'/'.join(map(str, twice[0]))} is predicted in both {seen[twice[0]]} and {path} "
                              "(one repeat's parts)")
        seen.update((key, path) for key in keys)
        rows += part
    return rows


def error_spread(validations: list[Path | list[Path]]) -> dict:
    """validations: one entry per repeat, a validation.json or the list of a repeat's parts."""
    per_run: dict[tuple, list[dict]] = {}
    control: list[float] = []  # the study's 1-rank runs, predicted from the same job's 1-rank runs around them
    for repeat in validations:
        for r in _repeat_rows(repeat if isinstance(repeat, list) else [repeat]):
            if r["world"] > 1:
                per_run.setdefault((r["mode"], r["backend"], r["layout"]), []).append(r)
            elif r.get("error") is not None:
                control.append(r["error"])
    rows = []
    for (m, b, l), runs in sorted(per_run.items()):
        errs = [r["error"] for r in runs]
        rows.append({"mode": m, "backend": b, "layout": l, "errors": errs, "mean": statistics.mean(errs),
                     "min": min(errs), "max": max(errs), "measured_ms": [r.get("measured_ms") for r in runs],
                     "predicted_ms": [r.get("predicted_ms") for r in runs]})
    per_run = {k: [r["error"] for r in runs] for k, runs in per_run.items()}
    every = [e for errs in per_run.values() for e in errs]

    def summary(errors: list[float]) -> dict:
        return {"predictions": len(errors), "mean_abs_error": statistics.mean(abs(e) for e in errors),
                "max_abs_error": max(abs(e) for e in errors)}

    groups: dict[str, dict[str, list[float]]] = {"backend": {}, "link": {}}
    for (_, backend, layout), errs in per_run.items():
        groups["backend"].setdefault(backend, []).extend(errs)
        groups["link"].setdefault("across nodes" if "x" in str(layout) else "one node", []).extend(errs)
    return {"repeats": len(validations), "rows": rows,
            "mean_abs_error": statistics.mean(abs(e) for e in every) if every else None,
            "max_abs_error": max((abs(e) for e in every), default=None),
            "by_backend": {b: summary(e) for b, e in sorted(groups["backend"].items())},
            "by_link": {k: summary(e) for k, e in sorted(groups["link"].items(), reverse=True)},
            # nothing to model in these (one rank, the same job as its inputs): the machine's drift in the sitting
            "control": summary(control) if control else None}


def markdown(spread: dict) -> str:
    lines = [f"{spread['repeats']} repeats", "", "| mode | backend | N | error per repeat | mean | min – max |",
             "|---|---|---|---|---|---|"]
    for r in spread["rows"]:
        each = ", ".join(f"{100 * e:+.1f}%" for e in r["errors"])
        lines.append(f"| {r['mode']} | {r['backend']} | {r['layout']} | {each} | {100 * r['mean']:+.1f}% | "
                     f"{100 * r['min']:+.1f}% – {100 * r['max']:+.1f}% |")
    if spread["mean_abs_error"] is not None:
        lines += ["", f"mean |error| {100 * spread['mean_abs_error']:.1f}%, largest |error| {100 * spread['max_abs_error']:.1f}%"]
        for key in ("by_backend", "by_link"):
            lines += [f"- {name}: mean |error| {100 * g['mean_abs_error']:.1f}%, largest {100 * g['max_abs_error']:.1f}% "
                      f"({g['predictions']} predictions)" for name, g in spread.get(key, {}).items()]
        if spread.get("control"):
            c = spread["control"]
            lines += [f"- control, the 1-rank runs from the same job's 1-rank runs around them (drift, nothing to "
                      f"model): mean |error| {100 * c['mean_abs_error']:.1f}%, largest {100 * c['max_abs_error']:.1f}% "
                      f"({c['predictions']} predictions)"]
    return "\n".join(lines)
