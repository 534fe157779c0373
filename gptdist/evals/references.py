"""Reference values printed beside evaluation results, so a number can be placed: a uniform guess (chance)
and GPT-2 124M's published results. A small model trained for minutes on a CPU is expected near chance."""

from __future__ import annotations

import math

GPT2_VOCAB = 50257

# GPT-2 paper (Radford et al. 2019), Table 3, the 117M model (124M counting embeddings as here).
GPT2_124M_LAMBADA_ACC = 0.4599
GPT2_124M_LAMBADA_PPL = 35.13
# Quoted in build-nanogpt's hellaswag.py: its own raw-context script, and lm-eval-harness.
GPT2_124M_HELLASWAG_ACC_NORM = (0.2955, 0.3114)


def reference_line(task: str) -> str:
    """One line: what chance gives on `task` and what GPT-2 124M reached ("" for unknown tasks)."""
    if task == "val":
        return (f"  reference: a uniform guess over GPT-2's {GPT2_VOCAB:,} tokens has loss "
                f"ln({GPT2_VOCAB}) = {math.log(GPT2_VOCAB):.2f}")
    if task == "hellaswag":
        lo, hi = GPT2_124M_HELLASWAG_ACC_NORM
        return (f"  reference: chance 0.25 (4 endings); GPT-2 124M acc_norm {lo:.4f} (build-nanogpt) to "
                f"{hi:.4f} (lm-eval)")
    if task == "lambada":
        return (f"  reference: chance acc ~0 and ppl >= {GPT2_VOCAB:,} (per word, a uniform guess per token); "
                f"GPT-2 124M acc {GPT2_124M_LAMBADA_ACC:.4f}, ppl {GPT2_124M_LAMBADA_PPL} (GPT-2 paper, Table 3)")
    return ""
