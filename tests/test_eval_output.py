"""What `launch/evaluate.py` prints: each result with its reference values beside it (chance and GPT-2
124M's published numbers), and no carriage-return progress bar when the output is not a terminal."""

from __future__ import annotations

import math

from launchers import python


def test_results_come_with_references_and_no_bar_in_a_redirected_log():
    proc = python(["launch/evaluate.py", "--random-init", "gpt2-tiny", "--tasks", "hellaswag,lambada", "--limit", "2",
                   "--device", "cpu"])  # progress left on: captured output is not a terminal
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    assert "item/s" not in proc.stderr  # no tqdm bar at all, not even its final line
    lines = proc.stdout.splitlines()
    hs = lines.index(next(line for line in lines if line.startswith("hellaswag: acc")))
    assert lines[hs + 1].split() == ("reference: chance 0.25 (4 endings); GPT-2 124M acc_norm 0.2955 "
                                     "(build-nanogpt) to 0.3114 (lm-eval)").split()
    lb = lines.index(next(line for line in lines if line.startswith("lambada: acc")))
    # GPT-2 paper, Table 3 (117M row): LAMBADA accuracy 45.99%, perplexity 35.13
    assert "GPT-2 124M acc 0.4599, ppl 35.13 (GPT-2 paper, Table 3)" in lines[lb + 1]
    assert "ppl >= 50,257" in lines[lb + 1]


def test_val_reference_is_the_uniform_guess():
    from gptdist.evals.references import reference_line

    assert f"ln(50257) = {math.log(50257):.2f}" in reference_line("val") and "10.82" in reference_line("val")
