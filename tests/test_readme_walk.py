"""Walk the README as a newcomer would: run its commands in order, with short step counts, and check that
each succeeds and that nothing an earlier command wrote is lost (issue 19).

The commands are read from README.md at test time, so an example added or changed there is tested from then
on. The convention (documented in the README, "This README is tested"): a command is a line in a ```bash
block; a trailing backslash continues it, `#` starts a comment, and `&&` chains are run part by part.
A command that cannot run on a 2-core CPU without network is skipped by a rule in SKIP, with its reason;
a command that matches no rule is run.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launchers import REPO, free_port, subprocess_env

README = REPO / "README.md"

# (rule, reason). A rule is a function of the command's words.
SKIP = [
    (lambda w: w[0] == "pip", "installs packages; .ci/run runs the README's install command"),
    (lambda w: w[:3] == ["python", "-m", "pytest"], "the test suite itself"),
    (lambda w: w[0] == "export", "sets a placeholder mirror path; the tests set GPTDIST_DATA_MIRROR themselves"),
    (lambda w: "--nnodes" in w and w[w.index("--nnodes") + 1] != "1", "multi-node: needs a second machine"),
    (lambda w: any(x.startswith("hf:") for x in w), "a Hugging Face dataset download (network)"),
    (lambda w: "--hf" in w, "Hugging Face GPT-2 weights (network or a populated cache)"),
    (lambda w: any("gpt2_fineweb" in x or "gpt2_shakespeare_gpu" in x for x in w), "GPT-2 124M config: a GPU job"),
    (lambda w: "configs/ladder/default.yaml" in w, "the GPU ladder (GPT-2 124M, B=16, T=1024)"),
    (lambda w: "launch/scaling.py" in w,
     "its torchrun jobs run in the repository root (gptdist/studies/scaling/plan.py, cwd=REPO), not in the walk's scratch "
     "folder; tests/test_scaling.py runs the study"),
    (lambda w: "launch/cluster.py" in w,
     "builds network namespaces (and Slurm daemons) as root; tests/test_cluster.py and tests/test_slurm.py run them"),
    (lambda w: "--inter-table" in w or "DIR/results.json" in w,
     "placeholders for a cluster study's measured tables; tests/test_simulator_topology.py runs the topology model"),
    (lambda w: w[0] == "bash" and any(x.startswith("launch/reproduce/") for x in w),
     "a whole measurement (cluster, root, many minutes); its parts are tested in tests/test_cluster*.py"),
    (lambda w: "launch/scaling_laws.py" in w and "run" in w,
     "the whole CPU sweep (~26 min on prepared FineWeb data); tests/test_scaling_laws.py runs tiny sweeps"),
    (lambda w: "launch/plot_runs.py" in w and any("runs/laws_cpu" in x for x in w),
     "plots the sweep's runs (see the line above); tests/test_run_plots.py runs the plotter"),
    (lambda w: "launch/zero_memory.py" in w,
     "minutes of 2- and 4-rank runs of gpt2-tiny; tests/test_zero_memory.py and tests/test_zero.py run the parts"),
    (lambda w: "configs/ladder/cpu_tiny.yaml" in w,
     "minutes of interleaved rounds and torch.compile on a CPU; tests/test_ladder.py runs the ladder"),
]

# Words appended to a command that runs SCRIPT (a word equal to the key) so that it finishes in seconds
# (argparse and the config overrides both let the last occurrence win).
SHORTEN = {
    "launch/train.py": ["--train.max_steps=3", "--eval.val_every=3", "--eval.val_batches=1", "--eval.sample_tokens=8"],
    "launch/evaluate.py": ["--limit", "2", "--val-batches", "1"],
    "launch/sample.py": ["--max-new-tokens", "5"],
}
COMM_BENCH_SWEEP = ["-b", "1K", "-e", "4K", "-w", "1", "-n", "2"]
SHORTEN.update({f"comm_bench/{name}.py": COMM_BENCH_SWEEP
                for name in ("allreduce", "allgather", "reducescatter", "broadcast", "alltoall")})
PROFILED_TRAIN = ["--train.max_steps=6"]  # the profiler's schedule (wait 1, warmup 1, active 3) needs 5 steps

# What the scratch folder links back to, so relative paths in the commands work as in a checkout.
LINKED = ["launch", "configs", "comm_bench", "gptdist", "docs"]


def readme_commands(text: str) -> list[list[str]]:
    """The commands of every ```bash block, in order, as word lists (`&&` chains split)."""
    commands, in_bash, pending = [], False, ""
    for line in text.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            in_bash = not in_bash and fence[3:].strip() == "bash"
            pending = ""
            continue
        if not in_bash:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending = ""
        part: list[str] = []
        for word in words + ["&&"]:
            if word == "&&":
                if part:
                    commands.append(part)
                part = []
            else:
                part.append(word)
    return commands


def skip_reason(words: list[str]) -> str:
    return next((reason for rule, reason in SKIP if rule(words)), "")


def runnable(words: list[str]) -> list[str]:
    """The command as this test runs it: this interpreter, a free port instead of torchrun's fixed
    --standalone one (other tests run at the same time), and the short-run words appended."""
    if words[0] == "python":
        argv = [sys.executable, *words[1:]]
    elif words[0] == "torchrun":
        rest = words[1:]
        if "--standalone" in rest:
            rest.remove("--standalone")
            rest = ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *rest]
        argv = [sys.executable, "-m", "torch.distributed.run", *rest]
    else:
        raise AssertionError(f"README command {shlex.join(words)!r}: neither python nor torchrun; add a SKIP rule "
                             "with a reason, or teach this test to run it")
    for script, extra in SHORTEN.items():
        if script in words:
            argv += extra
    if "launch/train.py" in words and "--profile.enabled=true" in words:
        argv += PROFILED_TRAIN
    return argv


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (size, sha256)} of every file the walk wrote."""
    skip = {root / name for name in LINKED}
    return {str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file() and not any(s in p.parents for s in skip)}


def assert_nothing_lost(root: Path, before: dict, after: dict, command: str) -> None:
    """Every file that existed is still there, and only ever appended to (logs grow; nothing is replaced)."""
    lost = [name for name in before if name not in after]
    changed = [name for name, (size, digest) in before.items() if name in after and after[name] != (size, digest)
               and hashlib.sha256((root / name).read_bytes()[:size]).hexdigest() != digest]
    assert not lost and not changed, f"after `{command}`: lost {lost[:5]}, rewritten {changed[:5]}"


def test_readme_parser_follows_the_convention():
    text = """
```bash
# a comment line
python a.py --x "two words" && python b.py   # trailing comment
torchrun --standalone --nproc-per-node 2 c.py \\
    --y=1
```

```
python not_a_command.py
```
```bash
pip install "torch==2.13.0" -e ".[dev]"
```
"""
    assert readme_commands(text) == [
        ["python", "a.py", "--x", "two words"], ["python", "b.py"],
        ["torchrun", "--standalone", "--nproc-per-node", "2", "c.py", "--y=1"],
        ["pip", "install", "torch==2.13.0", "-e", ".[dev]"],
    ]
    assert skip_reason(["pip", "install", "x"]).startswith("installs packages")
    assert skip_reason(["torchrun", "--nnodes", "2", "train.py"]).startswith("multi-node")
    assert skip_reason(["python", "launch/train.py", "--config", "configs/shakespeare_cpu.yaml"]) == ""
    # short-run words go to the script they belong to, and only there
    assert runnable(["python", "comm_bench/plot.py", "n4", "--out", "plots"])[1:] == ["comm_bench/plot.py", "n4", "--out", "plots"]
    bench = runnable(["torchrun", "--standalone", "--nproc-per-node", "4", "comm_bench/allreduce.py", "-e", "64M"])
    assert bench[-8:] == COMM_BENCH_SWEEP and "--standalone" not in bench and bench[bench.index("--nnodes") + 1] == "1"


@pytest.mark.slow
def test_walk_the_readme(tmp_path):
    commands = readme_commands(README.read_text(encoding="utf-8"))
    main_job = next(i for i, w in enumerate(commands) if "launch/train.py" in w)
    assert "configs/shakespeare_cpu.yaml" in commands[main_job], "the first training command should be the main job"
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    env = subprocess_env(WANDB_MODE="disabled")
    assert os.environ.get("GPTDIST_DATA_MIRROR"), "the walk needs the offline data mirror"

    ran, skipped = [], []
    main_files: dict[str, tuple[int, str]] = {}

    def run(words: list[str]) -> subprocess.CompletedProcess:
        proc = subprocess.run(runnable(words), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (f"README command failed ({proc.returncode}): {shlex.join(words)}\n"
                                      f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc

    for i, words in enumerate(commands):
        reason = skip_reason(words)
        if reason:
            skipped.append((shlex.join(words), reason))
            continue
        before = snapshot(tmp_path)
        run(words)
        assert_nothing_lost(tmp_path, before, snapshot(tmp_path), shlex.join(words))
        ran.append(shlex.join(words))
        if i == main_job:
            main_files = {k: v for k, v in snapshot(tmp_path).items() if k.startswith("runs/")}
            assert any(k.endswith("samples.txt") for k in main_files) and any("checkpoints" in k for k in main_files)

    # The main job's one-liner, run again at the end: it succeeds, and its finished run is left as it was.
    rerun = [commands[main_job]]
    if main_job > 0 and "launch/prepare_data.py" in commands[main_job - 1]:
        rerun.insert(0, commands[main_job - 1])  # the one-liner's first half: a no-op the second time
    for words in rerun:
        proc = run(words)
    assert "already finished" in proc.stdout + proc.stderr
    after = snapshot(tmp_path)
    for name, data in main_files.items():
        assert name in after, f"{name} of the main job is gone"
        if not name.endswith(".log"):  # its log records the rerun; everything else is untouched
            assert after[name] == data, f"{name} of the main job changed"

    print("\nran:\n  " + "\n  ".join(ran) + "\nskipped:\n  " + "\n  ".join(f"{c}  <- {r}" for c, r in skipped))
    assert len(ran) >= 6, ran
