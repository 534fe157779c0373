"""How a result was made: one record every results writer stores, and the header of every results README.

    provenance(device, command=..., config=...) -> {"hardware": {...}, "torch": ..., "gloo"/"nccl": ...,
                                                     "git_commit": ..., "command": ..., "config": ..., "date_utc": ...}

Raw JSON files hold it as a `provenance` object; `readme_header(p)` renders the fixed header that opens each
docs/results/<topic>_<hardware>/README.md (docs/architecture.md, "Results").
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware(device: Optional[torch.device] = None) -> dict[str, Any]:
    """CPU model and cores, GPU model and count, and the load when asked (other processes compete)."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "host": platform.node(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "gpu_model": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if device is not None:
        info["device"] = str(device)
    return info


def comm_versions() -> dict[str, Any]:
    """gloo has no version of its own: it is the one built into this torch. NCCL's, when CUDA is there."""
    out: dict[str, Any] = {"gloo": f"built into torch {torch.__version__}" if torch.distributed.is_gloo_available() else None}
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return out


def git_commit() -> Optional[str]:
    """HEAD of the checkout this code runs from, with "+dirty" when files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def current_command() -> str:
    """The command line that started this process, as one could type it again."""
    return shlex.join(["python"] + sys.argv)


def provenance(device: Optional[torch.device] = None, command: Optional[str] = None,
               config: Any = None) -> dict[str, Any]:
    """The record (module docstring). `config`: a dict, a path or a Config (stored as given, or its dict)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return {
        "hardware": hardware(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **comm_versions(),
        "git_commit": git_commit(),
        "command": command or current_command(),
        "config": str(config) if isinstance(config, Path) else config,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def readme_header(p: dict[str, Any], shared_machine: Optional[bool] = None) -> str:
    """The fixed header of a results README, from a provenance record."""
    hw = p["hardware"]
    gpus = f"{hw['gpu_count']} x {hw['gpu_model']}" if hw.get("gpu_count") else "none"
    load = hw.get("load_average")
    if shared_machine is None and load is not None:
        shared_machine = load[0] > (hw.get("cpus_usable") or 1)
    lines = [
        f"- Hardware: CPU {hw['cpu_model']} ({hw['cpu_count']} cores); GPUs: {gpus}",
        f"- Software: torch {p['torch']}, python {p['python']}, gloo {p.get('gloo')}"
        + (f", NCCL {p['nccl']}" if p.get("nccl") else ""),
        f"- Commit: {p.get('git_commit')}",
        f"- Command: `{p['command']}`",
        f"- Config: {p['config'] if isinstance(p.get('config'), str) else 'in the raw JSON (provenance.config)'}",
        f"- Date (UTC): {p['date_utc']}",
    ]
    if load is not None:
        lines.append(f"- Load average at the end (1/5/15 min): {', '.join(f'{x:.1f}' for x in load)}"
                     + (" — the machine was shared with other jobs" if shared_machine else ""))
    return "\n".join(lines) + "\n"
