"""The project's dtype names, one set everywhere (config, launchers, results): fp32, bf16, fp16.

torch's long names (float32, bfloat16, float16) are refused with a hint, so one CLI never says `float32`
where another says `fp32`."""

from __future__ import annotations

import torch

from gptdist.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_LONG_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def check_dtype_name(name: str, allowed: tuple[str, ...] = tuple(DTYPES), what: str = "dtype") -> str:
    """`name` if it is one of `allowed`, else a ConfigError (naming the short name for torch's long one)."""
    if name in allowed:
        return name
    hint = f" (use {_LONG_NAMES[name]!r})" if _LONG_NAMES.get(name) in allowed else ""
    raise ConfigError(f"{what}: {name!r} is not one of {', '.join(allowed)}{hint}")


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[check_dtype_name(name)]
