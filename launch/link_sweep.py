"""Efficiency vs link rate from scaling studies run at several rates of the emulated cluster.

    python launch/link_sweep.py --layout 2x1 --out DIR 250mbit_overlap_true=S1/results.json 1gbit_overlap_true=... \
        [--predicted 250mbit_overlap_true=V1/validation.json ...]

Each label is RATE_SETTING; its study's strong-scaling row of --layout (manual backend) is one point.
Writes DIR/link_sweep.md, link_sweep.json and efficiency_vs_link_rate.png (gptdist/studies/scaling/link_sweep.py).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard, make_parser  # noqa: E402


def _labelled(items: list[str]) -> dict[str, Path]:
    from gptdist.errors import ConfigError

    out = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or "_" not in label or not Path(path).is_file():
            raise ConfigError(f"expected RATE_SETTING=existing results.json, got {item!r}")
        out[label] = Path(path)
    return out


def main(argv: list[str]) -> None:
    from gptdist.studies.scaling import link_sweep

    p = make_parser(__doc__, first_paragraph_only=False)
    p.add_argument("studies", nargs="+", help="RATE_SETTING=results.json of a scaling study at that rate")
    p.add_argument("--layout", default="2x1")
    p.add_argument("--backend", default="manual")
    p.add_argument("--predicted", nargs="*", default=[], help="RATE_SETTING=validation.json (launch/simulate.py validate)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    points = link_sweep.sweep_points(_labelled(args.studies), args.layout, args.backend)
    predicted = []
    for label, path in _labelled(args.predicted).items():
        rows = {r["layout"]: r for r in json.loads(path.read_text())["rows"] if r["backend"] == args.backend}
        rate, _, setting = label.partition("_")
        from gptdist.cluster.netns import parse_rate
        n = rows[args.layout]["world"]
        predicted.append({"rate_gbit": parse_rate(rate) / 1e9, "setting": setting,
                          "efficiency": rows["1"]["predicted_ms"] / (n * rows[args.layout]["predicted_ms"])})
    out = Path(args.out)
    table = link_sweep.markdown(points)
    png = link_sweep.plot(points, out, f"{args.backend} at {args.layout}, strong scaling, emulated cluster", predicted)
    (out / "link_sweep.md").write_text(table + "\n")
    (out / "link_sweep.json").write_text(json.dumps({"command": "python launch/link_sweep.py " + " ".join(argv),
                                                     "measured": points, "predicted": predicted}, indent=2) + "\n")
    print(table)
    print(f"wrote {png}")


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
