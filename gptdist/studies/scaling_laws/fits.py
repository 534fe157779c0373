"""Fits of final losses against model size N, tokens D and compute C, with bootstrap intervals.

Approach 2 (IsoFLOP; Hoffmann et al. 2022, sec. 3.2): at each budget C, a parabola in x = ln N through
the runs' final losses; its vertex is N_opt(C), and D_opt(C) is read off the budget's own (ln N, ln D)
line at that N (so it uses the FLOP count the runs really had, not 6ND). Then power laws
N_opt = k_N·C^a and D_opt = k_D·C^b by least squares in log-log.

Approach 3 (parametric; sec. 3.3): L(N, D) = E + A/N^α + B/D^β, fitted as Hoffmann et al. did:
parameters (a, b, e, α, β) with A = e^a, B = e^b, E = e^e; minimise the sum over runs of
Huber_δ(LSE(a − α·ln N, b − β·ln D, e) − ln L) with δ = 1e-3, by L-BFGS (scipy's L-BFGS-B, analytic gradient) from the best starts of a grid.
Its compute-optimal frontier under C = 6ND: N_opt = G·(C/6)^(β/(α+β)), D_opt = (C/6)/N_opt,
G = (αA / (βB))^(1/(α+β)).

Bootstrap: resample the runs with replacement (within each budget for Approach 2), refit, and take the
2.5 and 97.5 percentiles. A resample whose fit is degenerate (a parabola opening downwards or with its
vertex outside the sizes tried, fewer than 3 sizes at a budget) is dropped and counted.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

HUBER_DELTA = 1e-3

# Published values, for the side-by-side table. a, b: N_opt ∝ C^a, D_opt ∝ C^b.
PUBLISHED = {
    "Chinchilla (Hoffmann et al. 2022), Approach 3": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28,
                                                       "a": 0.46, "b": 0.54},
    "Chinchilla (Hoffmann et al. 2022), Approaches 1-2": {"a": 0.50, "b": 0.50},
    "Besiroglu et al. 2024 (replication of Approach 3)": {"E": 1.82, "A": 482.0, "B": 2085.4, "alpha": 0.348,
                                                          "beta": 0.366, "a": 0.51, "b": 0.49},
    "Kaplan et al. 2020": {"a": 0.73, "b": 0.27},
}


@dataclass
class Point:
    """One finished run: N params, D tokens, C FLOPs (real), its final loss, and its budget (the group)."""

    params: float
    tokens: float
    flops: float
    loss: float
    budget: float


def points_from_records(records: Sequence[dict[str, Any]]) -> tuple[list[Point], list[str]]:
    """(points, names of runs with no final loss): failed or unfinished runs are left out and named."""
    points, missing = [], []
    for r in records:
        if r.get("status") == "done" and r.get("val_loss") is not None and math.isfinite(r["val_loss"]):
            points.append(Point(r["params"], r["tokens"], r["flops"], r["val_loss"], r["budget"]))
        else:
            missing.append(r["name"])
    return points, missing


def _interval(samples: list[float]) -> Optional[list[float]]:
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))] if len(samples) >= 2 else None


# ---------------------------------------------------------------------------------------------------
# Approach 2: IsoFLOP parabolas


@dataclass
class Parabola:
    budget: float
    flops: float  # mean real FLOPs of the budget's runs
    coeffs: tuple[float, float, float]  # loss = c2·x² + c1·x + c0, x = ln N
    n_opt: float
    d_opt: float
    loss_min: float


def fit_parabola(points: Sequence[Point]) -> Optional[Parabola]:
    """The IsoFLOP parabola of one budget's runs, or None when it has no minimum among the sizes tried
    (fewer than 3 sizes, opening downwards, or its vertex outside the sampled N: an extrapolated optimum)."""
    x = np.log([p.params for p in points])
    if len(set(np.round(x, 12))) < 3:
        return None
    y = np.array([p.loss for p in points])
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
        return None
    x_opt = -c1 / (2 * c2)
    if not x.min() <= x_opt <= x.max():
        return None
    # D at that N along this budget's runs: ln D is (nearly) linear in ln N at fixed C.
    slope, intercept = np.polyfit(x, np.log([p.tokens for p in points]), 1)
    return Parabola(points[0].budget, float(np.mean([p.flops for p in points])), (float(c2), float(c1), float(c0)),
                    float(math.exp(x_opt)), float(math.exp(intercept + slope * x_opt)),
                    float(c0 - c1 * c1 / (4 * c2)))


def power_law(c: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(exponent, coefficient) of y = coefficient·c^exponent, least squares in log-log."""
    exponent, log_k = np.polyfit(np.log(c), np.log(y), 1)
    return float(exponent), float(math.exp(log_k))


def _by_budget(points: Sequence[Point]) -> dict[float, list[Point]]:
    groups: dict[float, list[Point]] = {}
    for p in points:
        groups.setdefault(p.budget, []).append(p)
    return dict(sorted(groups.items()))


def _isoflop_once(groups: dict[float, list[Point]]) -> tuple[list[Parabola], Optional[dict[str, float]]]:
    parabolas = [p for p in (fit_parabola(g) for g in groups.values()) if p is not None]
    if len(parabolas) < 2:
        return parabolas, None
    a, k_n = power_law([p.flops for p in parabolas], [p.n_opt for p in parabolas])
    b, k_d = power_law([p.flops for p in parabolas], [p.d_opt for p in parabolas])
    return parabolas, {"a": a, "k_N": k_n, "b": b, "k_D": k_d}


def fit_isoflop(points: Sequence[Point], bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Approach 2. Returns parabolas per budget, the power laws and their bootstrap intervals."""
    groups = _by_budget(points)
    parabolas, laws = _isoflop_once(groups)
    out: dict[str, Any] = {
        "parabolas": [p.__dict__ for p in parabolas],
        "budgets_without_minimum": [b for b, g in groups.items() if fit_parabola(g) is None],
        "power_laws": laws,
    }
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {"a": [], "b": []}
    dropped = 0
    for _ in range(bootstrap if laws else 0):
        resampled = {b: [g[i] for i in rng.integers(0, len(g), len(g))] for b, g in groups.items()}
        boot_parabolas, boot = _isoflop_once(resampled)
        if boot is None or len(boot_parabolas) < len(parabolas):
            dropped += 1
            continue
        samples["a"].append(boot["a"])
        samples["b"].append(boot["b"])
    out["bootstrap"] = {"resamples": bootstrap, "dropped": dropped,
                        "ci95": {k: _interval(v) for k, v in samples.items()}}
    return out


# ---------------------------------------------------------------------------------------------------
# Approach 3: parametric L(N, D)


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> tuple[float, np.ndarray]:
    """(sum of Huber(LSE(a − α ln N, b − β ln D, e) − ln L), its gradient). theta = (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, runs)
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    residual = top + np.log(total) - log_l  # (runs,)
    weights /= total  # d LSE / d term: a softmax over the three terms
    small = np.abs(residual) <= HUBER_DELTA
    value = np.where(small, 0.5 * residual**2, HUBER_DELTA * (np.abs(residual) - 0.5 * HUBER_DELTA)).sum()
    slope = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)  # Huber'(r)
    grad = np.array([
        (slope * weights[0]).sum(), (slope * weights[1]).sum(), (slope * weights[2]).sum(),
        -(slope * weights[0] * log_n).sum(), -(slope * weights[1] * log_d).sum(),
    ])
    return float(value), grad


def _objective_at_starts(starts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    """The objective at every start at once (no gradient): (starts, 5) -> (starts,)."""
    a, b, e, alpha, beta = (starts[:, i : i + 1] for i in range(5))
    terms = np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e), axis=0)  # (3, starts, runs)
    top = terms.max(axis=0)
    residual = np.abs(top + np.log(np.exp(terms - top).sum(axis=0)) - log_l)
    return np.where(residual <= HUBER_DELTA, 0.5 * residual**2, HUBER_DELTA * (residual - 0.5 * HUBER_DELTA)).sum(axis=1)


def _start_grid() -> np.ndarray:
    """Hoffmann et al.'s grid of initialisations (a, b from 0 to 25, e from -1 to 1.5, α, β from 0 to 2)."""
    return np.array(list(itertools.product(np.arange(0, 30, 5), np.arange(0, 30, 5), np.arange(-1, 2, 0.5),
                                           np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))), dtype=float)


def _parametric_once(points: Sequence[Point], starts: np.ndarray, best_of: int) -> tuple[np.ndarray, float]:
    """L-BFGS from the `best_of` starts with the lowest objective (all starts are scored first)."""
    from scipy.optimize import minimize

    data = (np.log([p.params for p in points]), np.log([p.tokens for p in points]), np.log([p.loss for p in points]))
    start_values = _objective_at_starts(starts, *data)
    best_theta, best_value = None, math.inf
    for i in np.argsort(start_values)[:best_of]:
        result = minimize(_objective, starts[i], args=data, jac=True, method="L-BFGS-B",
                          options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12})
        if math.isfinite(result.fun) and result.fun < best_value:
            best_theta, best_value = result.x, float(result.fun)
    return best_theta, best_value


def _named(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(v) for v in theta)
    out = {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}
    if alpha > 0 and beta > 0:
        out["a"] = beta / (alpha + beta)  # N_opt ∝ C^a
        out["b"] = alpha / (alpha + beta)
        out["G"] = (alpha * out["A"] / (beta * out["B"])) ** (1 / (alpha + beta))
    return out


def parametric_loss(params: dict[str, float], n, d):
    return params["E"] + params["A"] / np.power(n, params["alpha"]) + params["B"] / np.power(d, params["beta"])


def frontier(params: dict[str, float], c) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) at compute c under C = 6ND."""
    c = np.asarray(c, dtype=float)
    n = params["G"] * np.power(c / 6, params["a"])
    return n, c / 6 / n


def fit_parametric(points: Sequence[Point], bootstrap: int = 200, seed: int = 0, best_of: int = 16) -> dict[str, Any]:
    """Approach 3 with bootstrap intervals for E, A, B, α, β, a, b."""
    if len(points) < 5:
        return {"params": None, "reason": f"{len(points)} runs; need >= 5 for 5 parameters"}
    grid = _start_grid()
    theta, value = _parametric_once(points, grid, best_of)
    params = _named(theta)
    # Bootstrap from the full fit's optimum plus the grid's best few starts: far fewer L-BFGS runs.
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    boot_starts = np.vstack([theta[None], grid])
    dropped = 0
    for _ in range(bootstrap):
        resample = [points[i] for i in rng.integers(0, len(points), len(points))]
        boot_theta, _ = _parametric_once(resample, boot_starts, best_of=2)
        try:
            named = _named(boot_theta)
        except OverflowError:  # A or B = e^a beyond float range: a degenerate resample, dropped and counted
            dropped += 1
            continue
        for k, v in named.items():
            samples.setdefault(k, []).append(v)
    return {"params": params, "objective": value, "huber_delta": HUBER_DELTA, "runs": len(points),
            "bootstrap": {"resamples": bootstrap, "dropped": dropped, "ci95": {k: _interval(v) for k, v in samples.items()}}}


def fit_all(records: Sequence[dict[str, Any]], bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    points, missing = points_from_records(records)
    return {"runs_used": len(points), "runs_missing": missing,
            "isoflop": fit_isoflop(points, bootstrap, seed), "parametric": fit_parametric(points, bootstrap, seed),
            "published": PUBLISHED}
