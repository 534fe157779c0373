"""Model FLOPs and MFU (model FLOPs utilisation).

FLOPs per token, forward + backward (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's `estimate_mfu`):

    6·N + 12·L·H·Q·T

N = parameters without the position embedding (the tied wte/lm_head matrix counted once: it is a real
matmul in the head), L layers, H heads, Q head size, T sequence length. 6·N is 2 FLOPs per multiply-add,
times 3 for forward + backward (backward costs twice the forward); 12·L·H·Q·T is the attention scores
and weighted sum (2 matmuls of T·Q per token per head, each 2 FLOPs per multiply-add, times 3). It
ignores LayerNorm, GELU, softmax and the recomputation of activation checkpointing: those cost time,
not model FLOPs, which is what MFU is about.

MFU = achieved model FLOP/s / the device's dense peak for the matmul dtype. Peaks below are NVIDIA's
datasheet numbers *without* structured sparsity (datasheets print the sparse figure with an asterisk;
dense is half of it). CPUs have no agreed peak here: pass `override` if you know yours.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from gptdist.model import GPTConfig

# (device key, dtype key) -> dense peak FLOP/s.
PEAK_FLOPS: dict[tuple[str, str], float] = {
    # H100 SXM5 datasheet (nvidia.com/en-us/data-center/h100): BF16/FP16 1,979 TFLOPS*, TF32 989 TFLOPS*
    # (* with sparsity), FP32 67 TFLOPS. GH200's GPU is the same H100 SXM part.
    ("H100 SXM", "bf16"): 989e12, ("H100 SXM", "fp16"): 989e12,
    ("H100 SXM", "tf32"): 494.5e12, ("H100 SXM", "fp32"): 67e12,
    # H100 PCIe, same datasheet: BF16/FP16 1,513*, TF32 756*, FP32 51.
    ("H100 PCIe", "bf16"): 756.5e12, ("H100 PCIe", "fp16"): 756.5e12,
    ("H100 PCIe", "tf32"): 378e12, ("H100 PCIe", "fp32"): 51e12,
    # H100 NVL, same datasheet (per GPU): BF16/FP16 1,671*, TF32 835*, FP32 60.
    ("H100 NVL", "bf16"): 835.5e12, ("H100 NVL", "fp16"): 835.5e12,
    ("H100 NVL", "tf32"): 417.5e12, ("H100 NVL", "fp32"): 60e12,
    # H200 SXM datasheet (nvidia.com/en-us/data-center/h200): same compute as H100 SXM.
    ("H200", "bf16"): 989e12, ("H200", "fp16"): 989e12, ("H200", "tf32"): 494.5e12, ("H200", "fp32"): 67e12,
    # H200 NVL, same datasheet: BF16/FP16 1,671*, TF32 835*, FP32 60 (the PCIe card: lower clocks and power).
    ("H200 NVL", "bf16"): 835.5e12, ("H200 NVL", "fp16"): 835.5e12,
    ("H200 NVL", "tf32"): 417.5e12, ("H200 NVL", "fp32"): 60e12,
    # A100 datasheet (SXM4 and PCIe alike): BF16/FP16 312 (624*), TF32 156 (312*), FP32 19.5.
    ("A100", "bf16"): 312e12, ("A100", "fp16"): 312e12, ("A100", "tf32"): 156e12, ("A100", "fp32"): 19.5e12,
    # A10 datasheet: BF16/FP16 125 (250*), TF32 62.5 (125*), FP32 31.2. (AWS's A10G is a different part.)
    ("A10", "bf16"): 125e12, ("A10", "fp16"): 125e12, ("A10", "tf32"): 62.5e12, ("A10", "fp32"): 31.2e12,
    # L4 datasheet: BF16/FP16 242*, TF32 120*, FP32 30.3.
    ("L4", "bf16"): 121e12, ("L4", "fp16"): 121e12, ("L4", "tf32"): 60e12, ("L4", "fp32"): 30.3e12,
    # V100 SXM2 datasheet: FP16 tensor 125, FP32 15.7 (no BF16, no TF32).
    ("V100", "fp16"): 125e12, ("V100", "fp32"): 15.7e12,
}


def device_key(device_name: str) -> Optional[str]:
    """`torch.cuda.get_device_name()` -> a key of PEAK_FLOPS, e.g. "NVIDIA H100 80GB HBM3" -> "H100 SXM"."""
    name = device_name.upper()
    if "H100" in name or "GH200" in name:
        if "PCIE" in name:
            return "H100 PCIe"
        if "NVL" in name:
            return "H100 NVL"
        return "H100 SXM"  # "NVIDIA H100 80GB HBM3", "NVIDIA GH200 480GB"
    if "H200" in name:
        return "H200 NVL" if "NVL" in name else "H200"  # "NVIDIA H200 NVL" vs "NVIDIA H200" (SXM)
    if "A100" in name:
        return "A100"
    if name.replace("NVIDIA ", "").strip() == "A10":
        return "A10"
    if name.replace("NVIDIA ", "").strip() == "L4":
        return "L4"
    if "V100" in name:
        return "V100"
    return None


def dtype_key(dtype: Union[str, torch.dtype], allow_tf32: Optional[bool] = None) -> str:
    """torch.bfloat16 -> "bf16"; float32 -> "tf32" when TF32 matmuls are on (CUDA), else "fp32"."""
    if isinstance(dtype, str):
        key = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)
    else:
        key = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    if key == "fp32":
        if allow_tf32 is None:
            allow_tf32 = torch.backends.cuda.matmul.allow_tf32
        if allow_tf32:
            key = "tf32"
    return key


def peak_flops(
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype] = torch.bfloat16,
    override: Optional[float] = None,
    allow_tf32: Optional[bool] = None,
) -> Optional[float]:
    """Dense peak FLOP/s of `device` for matmuls in `dtype`, or None where we do not know it (CPUs,
    unlisted GPUs). `override` wins. device: a torch device ("cuda:0"), a CUDA device name, or None
    for the current CUDA device if there is one."""
    if override is not None:
        return float(override)
    if device is None:
        if not torch.cuda.is_available():
            return None
        device = torch.device("cuda", torch.cuda.current_device())
    if isinstance(device, str) and (device == "cpu" or device.startswith(("cpu", "cuda", "mps"))):
        device = torch.device(device)
    if isinstance(device, torch.device):
        if device.type != "cuda" or not torch.cuda.is_available():
            return None
        device = torch.cuda.get_device_name(device)
    key = device_key(device)
    if key is None:
        return None
    return PEAK_FLOPS.get((key, dtype_key(dtype, allow_tf32)))


def param_count(cfg: GPTConfig, non_embedding: bool = False) -> int:
    """Parameters of GPT(cfg) without building it (the tied wte/lm_head matrix counted once).
    Equals `GPT(cfg).num_params(non_embedding)`; tests hold the two together."""
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    b = 1 if cfg.bias else 0
    layer_norm = C + b * C
    per_block = (
        2 * layer_norm
        + (C * 3 * C + b * 3 * C)  # attn.c_attn
        + (C * C + b * C)  # attn.c_proj
        + (C * 4 * C + b * 4 * C)  # mlp.c_fc
        + (4 * C * C + b * C)  # mlp.c_proj
    )
    n = V * C + L * per_block + layer_norm  # wte (= lm_head), blocks, ln_f
    if not non_embedding:
        n += cfg.block_size * C  # wpe
    return n


def flops_per_token(cfg: GPTConfig, seq_len: Optional[int] = None) -> int:
    """6·N + 12·L·H·Q·T model FLOPs per trained token (forward + backward), T = seq_len or block_size."""
    T = seq_len if seq_len is not None else cfg.block_size
    N = param_count(cfg, non_embedding=True)
    L, H, Q = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head
    return 6 * N + 12 * L * H * Q * T


def mfu(tokens_per_s: float, flops_per_token: float, peak: Optional[float]) -> Optional[float]:
    """Achieved model FLOP/s as a fraction of `peak` (0..1), or None when the peak is unknown."""
    if peak is None or peak <= 0:
        return None
    return tokens_per_s * flops_per_token / peak
