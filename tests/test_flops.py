"""FLOPs per token and MFU against hand-computed numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptdist.flops import PEAK_FLOPS, device_key, dtype_key, flops_per_token, mfu, param_count, peak_flops
from gptdist.model import GPT, PRESETS, GPTConfig


def test_gpt2_small_flops_per_token_by_hand():
    cfg = PRESETS["gpt2"]
    # N = 124,439,808 parameters - 1024 * 768 = 786,432 position-embedding parameters.
    assert param_count(cfg) == 124_439_808
    assert param_count(cfg, non_embedding=True) == 123_653_376
    # 6 N = 741,920,256; 12 L H Q T = 12 * 12 * 12 * 64 * 1024 = 113,246,208.
    assert flops_per_token(cfg) == 741_920_256 + 113_246_208 == 855_166_464
    # Shorter sequences only change the attention term: 12 * 12 * 12 * 64 * 256 = 28,311,552.
    assert flops_per_token(cfg, seq_len=256) == 741_920_256 + 28_311_552


def test_tiny_cpu_benchmark_shape_by_hand():
    # n_layer 4, n_head 4, n_embd 256, T 256, V 50304. Per block 12 C^2 + 13 C = 789,760;
    # wte 50304 * 256 = 12,877,824; ln_f 512: N = 12,877,824 + 4 * 789,760 + 512 = 16,037,376.
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=50304)
    assert param_count(cfg, non_embedding=True) == 16_037_376
    assert flops_per_token(cfg) == 6 * 16_037_376 + 12 * 4 * 4 * 64 * 256  # = 96,224,256 + 3,145,728


@pytest.mark.parametrize("name", ["gpt2-tiny", "gpt2-mini", "test"])
@pytest.mark.parametrize("bias", [True, False])
def test_param_count_matches_the_built_model(name, bias):
    cfg = dataclasses.replace(PRESETS[name], bias=bias)
    model = GPT(cfg)
    assert param_count(cfg) == model.num_params()
    assert param_count(cfg, non_embedding=True) == model.num_params(non_embedding=True)


def test_mfu():
    # 100k tokens/s of GPT-2 small at T=1024 on an H100 in bf16: 8.55e13 / 9.89e14 = 8.65 %.
    value = mfu(100_000, 855_166_464, 989e12)
    assert value == pytest.approx(0.086468, abs=1e-6)
    assert mfu(100_000, 855_166_464, None) is None


def test_peak_table_lookup():
    assert device_key("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert device_key("NVIDIA H100 PCIe") == "H100 PCIe"
    assert device_key("NVIDIA H200") == "H200"
    assert device_key("NVIDIA A100-SXM4-80GB") == "A100"
    assert device_key("NVIDIA A10G") is None  # not the A10
    assert device_key("Some CPU") is None
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert peak_flops("NVIDIA H200", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.float32, allow_tf32=True) == 494.5e12
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.float32, allow_tf32=False) == 67e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", torch.bfloat16) == 312e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", "tf32") == 156e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", torch.float32, allow_tf32=False) == 19.5e12
    assert peak_flops("Tesla V100-SXM2-16GB", torch.bfloat16) is None  # V100 has no bf16
    # Dense numbers: TF32 is half of BF16 on every Ampere/Hopper entry.
    for (dev, dt), value in PEAK_FLOPS.items():
        if dt == "tf32":
            assert value == pytest.approx(PEAK_FLOPS[(dev, "bf16")] / 2, rel=0.01)


def test_cpu_has_no_peak_unless_given():
    assert peak_flops("cpu", torch.float32) is None
    assert peak_flops(torch.device("cpu"), torch.float32) is None
    assert peak_flops("cpu", torch.float32, override=1e12) == 1e12
    assert dtype_key(torch.float32, allow_tf32=False) == "fp32"
    assert dtype_key("bfloat16") == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_cuda_string_without_a_gpu_has_no_peak():
    assert peak_flops("cuda", torch.bfloat16) is None
    assert peak_flops(None, torch.bfloat16) is None
