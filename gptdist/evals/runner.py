"""`launch/evaluate.py` and `launch/sample.py`'s glue: which tasks, the model source arguments, loading the
model, running the tasks.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch

from gptdist.dist import DistContext
from gptdist.evaluate import validation_loss
from gptdist.evals.common import Autocast, model_block_size, model_vocab_size


TASKS = ("val", "hellaswag", "lambada")


def parse_tasks(spec: str) -> list[str]:
    """"val,hellaswag" -> ["val", "hellaswag"]; an unknown name raises ConfigError."""
    from gptdist.errors import ConfigError

    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"unknown task(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(TASKS)}")
    return tasks


def add_model_source_args(parser) -> None:
    """--checkpoint | --hf | --random-init: where launch/evaluate.py and launch/sample.py get a model."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a gptdist checkpoint, its checkpoints/ folder or its run folder")
    src.add_argument("--hf", help="Hugging Face GPT-2 weights: gpt2, gpt2-medium, ... or a local folder")
    src.add_argument("--random-init", metavar="PRESET", help="a randomly initialised preset (baseline, smoke test)")


def load_model_for_eval(
    checkpoint: Optional[str] = None,
    hf: Optional[str] = None,
    random_init: Optional[str] = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> torch.nn.Module:
    """Exactly one source: a gptdist checkpoint, Hugging Face GPT-2 weights (a hub name such as
    "gpt2" or a local folder), or a randomly initialised preset (a chance-level baseline and a smoke
    test of the pipeline). Returns the model on `device` in eval mode."""
    from gptdist.errors import CheckpointError, ConfigError

    if sum(x is not None for x in (checkpoint, hf, random_init)) != 1:
        raise ConfigError("give exactly one of --checkpoint PATH, --hf NAME or --random-init PRESET")
    if checkpoint is not None:
        from pathlib import Path

        if not Path(checkpoint).exists():
            raise CheckpointError(f"{checkpoint}: no such checkpoint")
        from gptdist.checkpoint import load_model  # the trainer's checkpoint format

        model = load_model(checkpoint, device)
    elif hf is not None:
        from gptdist.hf import from_pretrained  # raises a clear GptdistError offline

        model = from_pretrained(hf)
    else:
        from gptdist.model import GPT, PRESETS

        if random_init not in PRESETS:
            raise ConfigError(f"unknown preset {random_init!r}: choose from {', '.join(PRESETS)}")
        torch.manual_seed(seed)
        model = GPT(PRESETS[random_init])
    return model.to(device).eval()


def run_eval_tasks(
    model: torch.nn.Module,
    tasks: Sequence[str],
    ctx: DistContext,
    enc,
    data_dir=None,
    batch_size: int = 8,
    seq_len: Optional[int] = None,
    val_batches: int = 20,
    limit: int = 0,
    hellaswag_path=None,
    lambada_path=None,
    items_per_forward: int = 1,
    autocast: Autocast = contextlib.nullcontext,
    progress: bool = True,
) -> dict:
    """Run the named tasks and return {"val": {"loss"}, "hellaswag": {...}, "lambada": {...}}."""
    from gptdist.errors import ConfigError

    results: dict = {}
    for task in tasks:
        if task in ("hellaswag", "lambada") and model_vocab_size(model) < enc.n_vocab:
            raise ConfigError(
                f"{task} needs GPT-2's tokenizer, but the model's vocab_size {model_vocab_size(model)} "
                f"is smaller than its {enc.n_vocab}"
            )
        if task == "val":
            if data_dir is None:
                raise ConfigError("task 'val' needs --data-dir (a folder written by launch/prepare_data.py)")
            T = seq_len or model_block_size(model)
            loss = validation_loss(model, data_dir, batch_size, T, val_batches, ctx, autocast)
            results["val"] = {"loss": loss, "batches": val_batches, "batch_size": batch_size, "seq_len": T}
        elif task == "hellaswag":
            from gptdist.evals.hellaswag import evaluate_hellaswag, load_hellaswag

            items = load_hellaswag(hellaswag_path)
            results["hellaswag"] = evaluate_hellaswag(
                model, enc, items, ctx, ctx.device, limit, progress, items_per_forward, autocast
            )
        elif task == "lambada":
            from gptdist.evals.lambada import evaluate_lambada, load_lambada

            items = load_lambada(lambada_path)
            results["lambada"] = evaluate_lambada(
                model, enc, items, ctx, ctx.device, limit, progress, max(1, 4 * items_per_forward), autocast
            )
        else:
            parse_tasks(task)  # raises the ConfigError that lists the valid names
    return results
