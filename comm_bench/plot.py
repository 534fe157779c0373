"""Plot comm_bench results: bus bandwidth and time against message size, log–log, one line per world size.

    python comm_bench/plot.py runs/comm_bench/n2/results.json runs/comm_bench/n4/results.json --out plots/

Writes busbw_vs_size.png and time_vs_size.png into --out: one panel per collective, one line per
(world size, nodes) found in the inputs. The time plot also draws each line's α–β fit (dashed).
--write-fit also saves the fits of all inputs together as fit.json (what the scaling simulator loads).
Arguments may be results.json files or the folders holding them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make gptdist importable

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from gptdist.studies import alphabeta  # noqa: E402
from gptdist.studies.alphabeta import OPS  # noqa: E402
from gptdist.errors import ConfigError  # noqa: E402


def load_results(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """(all rows, metadata of each input) from results.json files or folders holding one."""
    rows, metas = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise ConfigError(f"no results.json at {p}")
        try:
            data = json.loads(path.read_text())
            rows.extend(data["results"])
            metas.append(data["metadata"])
        except (json.JSONDecodeError, KeyError) as e:
            raise ConfigError(f"{path} is not a comm_bench results.json: {e}") from None
    return rows, metas


def _series(rows: list[dict], op: str) -> dict[tuple[int, int], list[dict]]:
    """(world size, nodes) -> rows of one op, sorted by size."""
    out: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        if r["op"] == op:
            out.setdefault((r["world_size"], r.get("nodes", 1)), []).append(r)
    return {k: sorted(v, key=lambda r: r["size_bytes"]) for k, v in sorted(out.items())}


def _size_label(nbytes: float, _pos=None) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g}{unit}"
    return f"{nbytes:g}"


def plot(rows: list[dict], out: Path, title: str = "") -> list[Path]:
    ops = [op for op in OPS if any(r["op"] == op for r in rows)]
    if not ops:
        raise ConfigError("no result rows to plot")
    model = alphabeta.fit_rows(rows)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, ylabel, fname in (("busbw_gbps", "bus bandwidth (GB/s)", "busbw_vs_size.png"),
                                  ("time_us", "time per call (µs)", "time_vs_size.png")):
        ncols = min(3, len(ops))
        nrows = (len(ops) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False)
        for ax, op in zip(axes.flat, ops):
            for (n, nodes), series in _series(rows, op).items():
                sizes = [r["size_bytes"] for r in series]
                label = f"n={n}" + (f" ({nodes} nodes)" if nodes > 1 else "")
                (line,) = ax.plot(sizes, [r[metric] for r in series], marker="o", markersize=3, label=label)
                if metric == "time_us" and (op, n) in model.fits:
                    fit = model.fits[(op, n)]
                    ax.plot(sizes, [fit.predict_time_us(s) for s in sizes], linestyle="--", color=line.get_color(),
                            linewidth=1, label=f"α–β fit n={n}: α={fit.alpha_us:.0f} µs, " + (
                                f"{fit.busbw_gbps:.2f} GB/s bus" if fit.beta_us_per_byte > 0 else "β=0"))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_size_label))
            ax.set_title(op)
            ax.set_xlabel("message size (B, nccl-tests 'size')")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(ops):]:
            ax.set_visible(False)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        written.append(out / fname)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="results.json files (or folders holding one)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--title", default="", help="figure title (default: backend, device and torch version)")
    p.add_argument("--write-fit", action="store_true", help="also write the α–β fits of all inputs as --out/fit.json")
    args = p.parse_args(argv)
    try:
        rows, metas = load_results(args.results)
        m = metas[0]
        title = args.title or f"comm_bench {m.get('backend')} on {m.get('device_name')}, torch {m.get('torch_version')}, {m.get('dtype')}"
        for path in plot(rows, Path(args.out), title):
            print(f"wrote {path}")
        if args.write_fit:
            model = alphabeta.fit_rows(rows)
            model.metadata = {"sources": [str(s) for s in args.results], "backend": m.get("backend"),
                              "device_name": m.get("device_name"), "torch_version": m.get("torch_version"),
                              "nccl_version": m.get("nccl_version"), "dtype": m.get("dtype")}
            model.save(Path(args.out) / "fit.json")
            print(f"wrote {Path(args.out) / 'fit.json'}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
