"""Hugging Face GPT-2 <-> gptdist: state dicts, configs and `from_pretrained`.

Our parameter names are GPT-2's own, so the mapping is one to one except for three things:

1. HF's GPT-2 uses `Conv1D` for `attn.c_attn`, `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj`: a linear layer
   whose weight is stored as (in_features, out_features), the transpose of `nn.Linear`'s (out, in).
2. HF checkpoints may carry the attention-mask buffers `attn.bias` / `attn.masked_bias` (not weights;
   we build our own mask), which we drop.
3. `lm_head.weight` is tied to `transformer.wte.weight` in both models; we check that it really is.

Vocabulary padding: our model may use V = 50304 (50257 rounded up to a multiple of 64, for GPU matmuls).
Loading HF's 50257 rows into such a model copies the 50257 real rows and zeroes the 47 padding rows; no
token id ever reaches them as an input. Their logits are then 0, and a softmax over all 50304 columns
would put mass on them (pretrained GPT-2's logits are mostly far below 0): generation and evaluation
pass the tokenizer's size as `vocab_limit`; elsewhere compare a padded pretrained model on
`logits[..., :50257]`. Exporting drops the padding rows again.

`transformers` is imported lazily: only the functions that build HF objects need it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union
from urllib.parse import urlparse

import torch
import torch.nn as nn

from gptdist.net import reachable
from gptdist.errors import CheckpointError, GptdistError
from gptdist.model import GPT, GPTConfig, pad_vocab

GPT2_VOCAB_SIZE = 50257
HF_MODEL_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
MIRROR_ENV = "GPTDIST_DATA_MIRROR"

# Weights stored by HF's Conv1D as (in, out); nn.Linear wants (out, in).
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-persistent attention-mask buffers some HF versions save.
_HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_TIED = ("transformer.wte.weight", "lm_head.weight")


def _is_conv1d(key: str) -> bool:
    return key.endswith(_CONV1D_SUFFIXES)


def hf_to_gptdist_state_dict(hf_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `GPT2LMHeadModel` (or `GPT2Model`) state dict -> ours, same vocab size as the input.

    Conv1D weights are transposed, mask buffers dropped, and `lm_head.weight` is set to the very tensor
    of `transformer.wte.weight` (tied, as in our model's own state dict)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in hf_sd.items():
        if key.endswith(_HF_BUFFER_SUFFIXES) or key == "lm_head.weight":
            continue
        name = key if key.startswith("transformer.") else f"transformer.{key}"  # GPT2Model has no prefix
        out[name] = tensor.t().contiguous() if _is_conv1d(name) else tensor
    if "transformer.wte.weight" not in out:
        raise CheckpointError("Hugging Face state dict has no transformer.wte.weight: is it a GPT-2 model?")
    wte = out["transformer.wte.weight"]
    lm_head = hf_sd.get("lm_head.weight")
    if lm_head is not None and lm_head is not wte and not torch.equal(lm_head, wte):
        # Our model has one matrix for both; an untied checkpoint cannot be represented.
        raise CheckpointError("Hugging Face lm_head.weight differs from transformer.wte.weight (untied); "
                              "gptdist ties them and cannot load this checkpoint")
    out["lm_head.weight"] = wte
    return out


def gptdist_to_hf_state_dict(
    model_or_sd: Union[nn.Module, Mapping[str, torch.Tensor]], vocab_size: Optional[int] = None
) -> dict[str, torch.Tensor]:
    """Our model (or its state dict) -> a `GPT2LMHeadModel` state dict (Conv1D layout, tied lm_head).

    vocab_size: rows of wte/lm_head to export. None means: a model padded to 50304 exports GPT-2's 50257
    (the padding rows belong to no token); any other V is exported as it is."""
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else dict(model_or_sd)
    wte = sd["transformer.wte.weight"]
    rows = wte.shape[0]
    if vocab_size is None:
        vocab_size = GPT2_VOCAB_SIZE if rows == pad_vocab(GPT2_VOCAB_SIZE) else rows
    if vocab_size > rows:
        raise CheckpointError(f"cannot export vocab_size {vocab_size}: the model has only {rows} rows")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key == "lm_head.weight":
            continue
        out[key] = tensor.t().contiguous() if _is_conv1d(key) else tensor.detach()
    out["transformer.wte.weight"] = wte.detach()[:vocab_size].contiguous()
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def load_hf_into(model: GPT, hf_sd: Mapping[str, torch.Tensor]) -> GPT:
    """Copy a Hugging Face GPT-2 state dict into `model` in place, checking every key and shape.

    A model with a larger vocabulary (e.g. 50304) gets the checkpoint's rows first and zeros after.
    Raises CheckpointError naming the first key that is missing, unexpected or of the wrong shape."""
    ours = hf_to_gptdist_state_dict(hf_sd)
    target = model.state_dict()
    missing = sorted(set(target) - set(ours))
    unexpected = sorted(set(ours) - set(target))
    if missing:
        raise CheckpointError(f"Hugging Face checkpoint lacks {missing[0]} ({len(missing)} missing keys): "
                              "does the model's n_layer match?")
    if unexpected:
        raise CheckpointError(f"Hugging Face checkpoint has {unexpected[0]}, which the model lacks "
                              f"({len(unexpected)} unexpected keys): does the model's n_layer match?")
    for key, dst in target.items():
        src = ours[key]
        vocab_padded = (key in _TIED and src.dim() == 2 and dst.dim() == 2
                        and src.shape[1] == dst.shape[1] and src.shape[0] < dst.shape[0])
        if src.shape != dst.shape and not vocab_padded:
            raise CheckpointError(f"shape mismatch for {key}: checkpoint {tuple(src.shape)}, "
                                  f"model {tuple(dst.shape)}")
    with torch.no_grad():
        for key, dst in target.items():
            if key == "lm_head.weight":
                continue  # the same storage as wte, filled just below or above
            src = ours[key]
            if key == "transformer.wte.weight" and src.shape[0] < dst.shape[0]:
                dst[: src.shape[0]].copy_(src)
                dst[src.shape[0]:].zero_()
            else:
                dst.copy_(src)
    return model


def gptconfig_from_hf(hf_config, **overrides) -> GPTConfig:
    """A `transformers.GPT2Config` -> `GPTConfig`; refuses variants our model does not implement."""
    act = getattr(hf_config, "activation_function", "gelu_new")
    problems = []
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function={act!r} (we use GELU, tanh approximation)")
    n_inner = getattr(hf_config, "n_inner", None)
    if n_inner not in (None, 4 * hf_config.n_embd):
        problems.append(f"n_inner={n_inner} (we use 4 * n_embd)")
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx=True")
    if not getattr(hf_config, "scale_attn_weights", True):
        problems.append("scale_attn_weights=False")
    if abs(getattr(hf_config, "layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon={hf_config.layer_norm_epsilon} (we use 1e-5)")
    if not getattr(hf_config, "tie_word_embeddings", True):
        problems.append("tie_word_embeddings=False")
    if problems:
        raise CheckpointError("unsupported Hugging Face GPT-2 config: " + "; ".join(problems))
    fields = dict(
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        block_size=hf_config.n_positions,
        vocab_size=hf_config.vocab_size,
        dropout=float(getattr(hf_config, "resid_pdrop", 0.0)),
        bias=True,
    )
    fields.update(overrides)
    return GPTConfig(**fields)


def hf_config_from_gptconfig(cfg: GPTConfig, vocab_size: Optional[int] = None):
    """`GPTConfig` -> `transformers.GPT2Config` (vocab_size as in `gptdist_to_hf_state_dict`)."""
    from transformers import GPT2Config

    if not cfg.bias:
        raise CheckpointError("Hugging Face GPT-2 always has biases; a bias=False model cannot be exported")
    if vocab_size is None:
        vocab_size = GPT2_VOCAB_SIZE if cfg.vocab_size == pad_vocab(GPT2_VOCAB_SIZE) else cfg.vocab_size
    eot = GPT2_VOCAB_SIZE - 1 if vocab_size >= GPT2_VOCAB_SIZE else None
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
    )


def to_hf_model(model: GPT, vocab_size: Optional[int] = None):
    """Our model -> a `transformers.GPT2LMHeadModel` with the same weights (fp32, eval mode)."""
    from transformers import GPT2LMHeadModel

    hf_model = GPT2LMHeadModel(hf_config_from_gptconfig(model.config, vocab_size))
    hf_sd = gptdist_to_hf_state_dict(model, vocab_size)
    expected = hf_model.state_dict()
    with torch.no_grad():
        for key, dst in expected.items():
            if key.endswith(_HF_BUFFER_SUFFIXES):
                continue
            dst.copy_(hf_sd[key])
    return hf_model.eval()


# ---------------------------------------------------------------------------------------------------
# from_pretrained


def _hf_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _mirror_folder(name: str, mirror) -> Optional[Path]:
    root = mirror or os.environ.get(MIRROR_ENV)
    if root and (Path(root) / "hf" / name / "config.json").is_file():
        return Path(root) / "hf" / name
    return None


def from_pretrained(name_or_path: str, mirror: Optional[Union[str, os.PathLike]] = None, **overrides) -> GPT:
    """Build our GPT with GPT-2 weights from the Hugging Face hub, its cache or a local folder.

    name_or_path: "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", or a folder written by
    `save_pretrained` (config.json + model.safetensors / pytorch_model.bin). A mirror folder (argument or
    $GPTDIST_DATA_MIRROR) may hold `<mirror>/hf/<name>/`, used before the hub.
    overrides: GPTConfig fields to change, e.g. dropout=0.0, attention="naive", vocab_size=50304.

    Offline (HF_HUB_OFFLINE=1, or huggingface.co not reachable on port 443 within 2 s) we only look in
    the local cache, and stop at once with a GptdistError if the model is not there."""
    local = Path(name_or_path)
    folder = local if local.is_dir() else _mirror_folder(name_or_path, mirror)
    if folder is None and name_or_path not in HF_MODEL_NAMES:
        raise GptdistError(f"unknown model {name_or_path!r}: expected one of {', '.join(HF_MODEL_NAMES)} "
                           "or a folder with config.json")
    if folder is not None and not (folder / "config.json").is_file():
        raise GptdistError(f"{folder} has no config.json: not a Hugging Face model folder")

    offline = folder is not None or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    why_offline = "HF_HUB_OFFLINE is set"
    if not offline and not reachable(_hf_host(), timeout_s=2.0):
        offline, why_offline = True, f"{_hf_host()}:443 is not reachable"

    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    source = str(folder) if folder is not None else name_or_path
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # keep transformers' own offline warnings out of our one-line error
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        if folder is not None:
            raise GptdistError(f"cannot load Hugging Face model from {folder}: {exc}") from None
        if offline:
            raise GptdistError(
                f"{name_or_path} is not in the Hugging Face cache and {why_offline}: download it once with "
                f"network access (python -c \"import transformers; transformers.GPT2LMHeadModel.from_pretrained("
                f"'{name_or_path}')\"), or pass a local folder / a mirror with hf/{name_or_path}/"
            ) from None
        raise GptdistError(f"cannot download {name_or_path} from the Hugging Face hub: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)

    config = gptconfig_from_hf(hf_model.config, **overrides)
    model = GPT(config)
    load_hf_into(model, hf_model.state_dict())
    return model
