"""The α–β (latency–bandwidth) model of a collective, fitted to a comm_bench sweep.

    time_us(size) = α + β · size

`size` is the message size in bytes exactly as comm_bench (and nccl-tests) prints it in its "size"
column: the buffer of an all-reduce or broadcast, the *whole* gathered output of an all-gather, the
*whole* input of a reduce-scatter, each rank's whole send buffer of an all-to-all. α is the fixed cost
of one call (µs), β the cost per byte (µs/B); 1/β is the asymptotic algorithm bandwidth and
busbw_factor(op, n)/β the asymptotic bus bandwidth (nccl-tests' busbw: the per-link rate a ring would need).

The fit minimises the *relative* error Σ ((α + β·sᵢ − tᵢ) / tᵢ)², a least-squares problem weighted by
1/tᵢ. An unweighted fit would be decided by the largest messages alone (their times are 10⁴× larger),
and α would come out as noise; in relative error a 4 KiB message matters as much as a 64 MiB one.

A fit file (fit.json, written by comm_bench) holds one entry per (op, world size). The scaling simulator
loads it with `load_fit(path)` and asks `predict_time_us(op, nbytes, world_size)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gptdist.errors import ConfigError

from gptdist.instrument.bus_bandwidth import OPS, busbw_factor  # noqa: F401  (re-exported: studies import them here)


@dataclass(frozen=True)
class AlphaBetaFit:
    """One op at one world size: time_us = alpha_us + beta_us_per_byte · nbytes."""

    op: str
    world_size: int
    alpha_us: float  # latency: the time of a zero-byte call
    beta_us_per_byte: float  # inverse bandwidth
    algbw_gbps: float | None  # 1/β in GB/s (1 GB = 1e9 B, as nccl-tests); inf (null in JSON) when β = 0
    busbw_gbps: float | None  # busbw_factor/β in GB/s
    rel_rms_error: float  # sqrt(mean(((pred − t)/t)²)) over the fitted points
    r2_log: float  # R² of log(pred) against log(t): the quality a log–log plot shows
    n_points: int
    min_bytes: int
    max_bytes: int
    dtype: str = ""
    backend: str = ""

    def predict_time_us(self, nbytes: float) -> float:
        return self.alpha_us + self.beta_us_per_byte * nbytes


def _gbps(bytes_per_us: float) -> float:
    return bytes_per_us * 1e6 / 1e9


def fit_alpha_beta(sizes: Sequence[float], times_us: Sequence[float]) -> tuple[float, float]:
    """Least squares in relative error of t = α + β·s, with α, β ≥ 0. Returns (α µs, β µs/B).

    Weighted by 1/t: minimise ‖A x − 1‖² with rows [1/tᵢ, sᵢ/tᵢ]. If the free fit makes a coefficient
    negative (noise at tiny sizes can), that coefficient is fixed at 0 and the other refitted alone.
    """
    s = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(times_us, dtype=np.float64)
    if s.shape != t.shape or s.ndim != 1 or len(s) < 2:
        raise ValueError("need at least two (size, time) points of the same length")
    if np.any(t <= 0) or np.any(s < 0):
        raise ValueError("times must be > 0 and sizes >= 0")
    A = np.stack([1.0 / t, s / t], axis=1)  # (N, 2)
    ones = np.ones_like(t)
    (alpha, beta), *_ = np.linalg.lstsq(A, ones, rcond=None)
    if alpha < 0:  # latency not resolvable: pure bandwidth model through the origin
        alpha = 0.0
        col = s / t
        beta = float(col @ ones / (col @ col))
    if beta < 0:  # size does not matter over this range: pure latency model
        beta = 0.0
        col = 1.0 / t
        alpha = float(col @ ones / (col @ col))
    return float(alpha), float(beta)


def fit_quality(sizes: Sequence[float], times_us: Sequence[float], alpha: float, beta: float) -> tuple[float, float]:
    """(relative RMS error, R² in log space) of the model against the measured times."""
    s = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(times_us, dtype=np.float64)
    pred = alpha + beta * s
    rel_rms = float(np.sqrt(np.mean(((pred - t) / t) ** 2)))
    log_t, log_p = np.log(t), np.log(np.maximum(pred, 1e-300))
    ss_res = float(np.sum((log_t - log_p) ** 2))
    ss_tot = float(np.sum((log_t - log_t.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return rel_rms, r2


def fit_op(op: str, world_size: int, sizes: Sequence[int], times_us: Sequence[float], dtype: str = "", backend: str = "") -> AlphaBetaFit:
    alpha, beta = fit_alpha_beta(sizes, times_us)
    rel_rms, r2 = fit_quality(sizes, times_us, alpha, beta)
    algbw = _gbps(1.0 / beta) if beta > 0 else math.inf
    return AlphaBetaFit(
        op=op,
        world_size=world_size,
        alpha_us=alpha,
        beta_us_per_byte=beta,
        algbw_gbps=algbw,
        busbw_gbps=algbw * busbw_factor(op, world_size),
        rel_rms_error=rel_rms,
        r2_log=r2,
        n_points=len(sizes),
        min_bytes=int(min(sizes)),
        max_bytes=int(max(sizes)),
        dtype=dtype,
        backend=backend,
    )


class CommModel:
    """A set of α–β fits keyed by (op, world size): what the scaling simulator queries."""

    def __init__(self, fits: Iterable[AlphaBetaFit], metadata: dict | None = None):
        self.fits: dict[tuple[str, int], AlphaBetaFit] = {(f.op, f.world_size): f for f in fits}
        self.metadata = metadata or {}

    def world_sizes(self, op: str) -> list[int]:
        return sorted(n for (o, n) in self.fits if o == op)

    def get(self, op: str, world_size: int) -> AlphaBetaFit:
        if (op, world_size) not in self.fits:
            have = ", ".join(f"{o}@{n}" for o, n in sorted(self.fits)) or "none"
            raise KeyError(f"no fit for {op} at world size {world_size} (have: {have})")
        return self.fits[(op, world_size)]

    def predict_time_us(self, op: str, nbytes: float, world_size: int, extrapolate: bool = False) -> float:
        """Predicted time (µs) of one `op` call on `nbytes` (comm_bench's size convention) at `world_size`.

        extrapolate=True answers for a world size that was not measured, from the nearest measured one,
        keeping its α and its *bus* bandwidth (the ring model: busbw is roughly independent of n, so
        time = α + nbytes · busbw_factor(op, n) / busbw). A rough guide only; measure when you can.
        """
        if world_size == 1:
            return 0.0  # a world of one communicates nothing
        if (op, world_size) in self.fits or not extrapolate:
            return self.get(op, world_size).predict_time_us(nbytes)
        measured = self.world_sizes(op)
        if not measured:
            raise KeyError(f"no fit for {op} at any world size")
        nearest = min(measured, key=lambda n: (abs(math.log(n) - math.log(world_size)), -n))
        fit = self.fits[(op, nearest)]
        if fit.beta_us_per_byte == 0:
            return fit.alpha_us
        bus_bytes_per_us = busbw_factor(op, nearest) / fit.beta_us_per_byte
        return fit.alpha_us + nbytes * busbw_factor(op, world_size) / bus_bytes_per_us

    predict_time = predict_time_us  # the name the scaling simulator's plan uses

    def to_json(self) -> dict:
        return {
            "model": "time_us = alpha_us + beta_us_per_byte * size_bytes (size as comm_bench's 'size' column)",
            "fit": "least squares in relative error, alpha >= 0, beta >= 0",
            "metadata": self.metadata,
            "fits": [_finite_or_none(asdict(f)) for f in sorted(self.fits.values(), key=lambda f: (OPS.index(f.op) if f.op in OPS else 99, f.world_size))],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")


def _finite_or_none(entry: dict) -> dict:
    """Strict JSON has no Infinity: a bandwidth with β = 0 (no size dependence measured) is written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}


def load_fit(path: str | Path) -> CommModel:
    """Read a fit.json written by comm_bench (or merge several: pass each and combine `.fits`)."""
    try:
        data = json.loads(Path(path).read_text())
        fits = [AlphaBetaFit(**entry) for entry in data["fits"]]
    except FileNotFoundError:
        raise ConfigError(f"fit file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a comm_bench fit.json: {e}") from None
    return CommModel(fits, data.get("metadata"))


def predict_time_us(model: CommModel, op: str, nbytes: float, world_size: int, extrapolate: bool = False) -> float:
    """Function form of `CommModel.predict_time_us`."""
    return model.predict_time_us(op, nbytes, world_size, extrapolate)


def fit_rows(rows: Iterable[dict]) -> CommModel:
    """Fit every (op, world size) group of comm_bench result rows (dicts with op, world_size, size_bytes,
    time_us, dtype, backend). Groups with fewer than two sizes are skipped."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["op"], int(row["world_size"])), []).append(row)
    fits = []
    for (op, n), group in groups.items():
        if len(group) < 2:
            continue
        fits.append(
            fit_op(op, n, [r["size_bytes"] for r in group], [r["time_us"] for r in group], dtype=group[0].get("dtype", ""), backend=group[0].get("backend", ""))
        )
    return CommModel(fits)
