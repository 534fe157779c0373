"""Print the model presets as a Markdown table, parameter counts taken from the built model.

    python -m gptdist.model_summary > docs/results/model_presets/README.md

Models are built on the meta device (shapes, no memory), so even GPT-2 XL counts in milliseconds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys

import torch

from gptdist.flops import flops_per_token
from gptdist.model import GPT, PRESETS, GPTConfig, pad_vocab


def count(cfg: GPTConfig, non_embedding: bool = False) -> int:
    with torch.device("meta"):
        return GPT(cfg).num_params(non_embedding=non_embedding)


def preset_rows() -> list[dict]:
    rows = []
    for name, cfg in PRESETS.items():
        padded = dataclasses.replace(cfg, vocab_size=pad_vocab(cfg.vocab_size))
        rows.append(
            dict(
                name=name, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                vocab_size=cfg.vocab_size, params=count(cfg), params_padded=count(padded),
                params_non_embedding=count(cfg, non_embedding=True),
                flops_per_token=flops_per_token(cfg),
            )
        )
    return rows


def summary_markdown() -> str:
    lines = [
        "# Model presets",
        "",
        "- command: `python -m gptdist.model_summary`",
        f"- torch {torch.__version__}, date {dt.date.today().isoformat()}",
        "- params: counted on the built model (meta device), tied wte/lm_head once; padded: vocab rounded up "
        "to a multiple of 64; N: params without the position embedding; FLOPs/token = 6N + 12·L·H·Q·T at "
        "T = block_size (forward + backward)",
        "",
        "| preset | n_layer | n_head | n_embd | block_size | vocab | params | params (padded vocab) | N (no wpe) | FLOPs/token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in preset_rows():
        lines.append(
            f"| {r['name']} | {r['n_layer']} | {r['n_head']} | {r['n_embd']} | {r['block_size']} | {r['vocab_size']:,} "
            f"| {r['params']:,} | {r['params_padded']:,} | {r['params_non_embedding']:,} | {r['flops_per_token']:,} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(summary_markdown())
