"""Hugging Face interop: logits of our GPT equal transformers' GPT2LMHeadModel after conversion, both ways.

No download: the HF models are built from a GPT2Config with random weights."""

from __future__ import annotations

import time

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gptdist.errors import CheckpointError, GptdistError  # noqa: E402
from gptdist.hf import (  # noqa: E402
    from_pretrained,
    gptconfig_from_hf,
    gptdist_to_hf_state_dict,
    hf_config_from_gptconfig,
    hf_to_gptdist_state_dict,
    load_hf_into,
    to_hf_model,
)
from gptdist.model import GPT, GPTConfig  # noqa: E402
from launchers import python, subprocess_env  # noqa: E402

# (n_layer, n_head, n_embd, n_positions, vocab_size)
SHAPES = [(1, 1, 16, 32, 101), (2, 4, 64, 64, 257), (3, 6, 96, 48, 1000)]
ATOL = 1e-5


def random_hf_model(n_layer, n_head, n_embd, n_positions, vocab_size, seed=0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=vocab_size,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None,
        initializer_range=0.1,  # larger than GPT-2's 0.02 so activations reach where GELU variants differ
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF zero-inits biases and LayerNorm affine params: randomise them so they count
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tokens(vocab_size, block_size, B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (B, block_size), generator=g)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}H{}C{}T{}V{}".format(*s))
@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_hf_to_ours_same_logits(shape, attention):
    hf = random_hf_model(*shape)
    ours = GPT(gptconfig_from_hf(hf.config, attention=attention)).eval()
    load_hf_into(ours, hf.state_dict())
    idx = tokens(shape[4], shape[3])
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}H{}C{}T{}V{}".format(*s))
def test_ours_to_hf_same_logits(shape):
    n_layer, n_head, n_embd, block_size, vocab_size = shape
    torch.manual_seed(2)
    ours = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                         vocab_size=vocab_size)).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm shifts, weights large enough to tell GELUs apart
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    # Export into a fresh HF model through plain load_state_dict(strict=True): our exported dict must be
    # a complete, exactly shaped GPT2LMHeadModel state dict.
    hf = GPT2LMHeadModel(hf_config_from_gptconfig(ours.config)).eval()
    hf.load_state_dict(gptdist_to_hf_state_dict(ours), strict=True)
    idx = tokens(vocab_size, block_size)
    with torch.no_grad():
        expected, _ = ours(idx)
        torch.testing.assert_close(hf(idx).logits, expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(to_hf_model(ours)(idx).logits, expected, atol=ATOL, rtol=0)


def test_round_trip_is_exact():
    hf = random_hf_model(*SHAPES[1])
    back = gptdist_to_hf_state_dict(hf_to_gptdist_state_dict(hf.state_dict()))
    for key, tensor in hf.state_dict().items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        assert torch.equal(back[key], tensor), key


def test_conv1d_weights_are_transposed():
    hf = random_hf_model(*SHAPES[1])
    ours = hf_to_gptdist_state_dict(hf.state_dict())
    w = hf.state_dict()["transformer.h.0.attn.c_attn.weight"]  # Conv1D: (in, out) = (C, 3C)
    assert w.shape == (64, 192)
    assert torch.equal(ours["transformer.h.0.attn.c_attn.weight"], w.t())  # nn.Linear: (out, in)
    assert ours["lm_head.weight"] is ours["transformer.wte.weight"]


def test_padded_vocab_load_and_export():
    """HF's 50257 rows go into a 50304-row model; the real columns' logits match, export drops padding."""
    V, Vp = 50257, 50304
    hf = random_hf_model(1, 2, 16, 16, V)
    ours = GPT(gptconfig_from_hf(hf.config, vocab_size=Vp)).eval()
    load_hf_into(ours, hf.state_dict())
    wte = ours.transformer.wte.weight
    assert torch.equal(wte[:V], hf.transformer.wte.weight)
    assert torch.count_nonzero(wte[V:]) == 0
    idx = tokens(V, 16)
    with torch.no_grad():
        got, _ = ours(idx)
        torch.testing.assert_close(got[..., :V], hf(idx).logits, atol=ATOL, rtol=0)

    exported = gptdist_to_hf_state_dict(ours)  # default: padded 50304 -> GPT-2's 50257
    assert exported["transformer.wte.weight"].shape == (V, 16)
    assert exported["lm_head.weight"].shape == (V, 16)
    assert hf_config_from_gptconfig(ours.config).vocab_size == V
    back = GPT2LMHeadModel(hf_config_from_gptconfig(ours.config)).eval()
    back.load_state_dict(exported, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, got[..., :V], atol=ATOL, rtol=0)


def test_shape_mismatch_names_the_key():
    hf = random_hf_model(1, 2, 16, 32, 101)
    ours = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=101))
    with pytest.raises(CheckpointError, match=r"transformer\.wpe\.weight.*\(32, 16\).*\(64, 16\)"):
        load_hf_into(ours, hf.state_dict())
    smaller_vocab = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=100))
    with pytest.raises(CheckpointError, match=r"transformer\.wte\.weight"):
        load_hf_into(smaller_vocab, hf.state_dict())


def test_layer_count_mismatch_names_the_key():
    hf = random_hf_model(1, 2, 16, 32, 101)
    ours = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=101))
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"lacks transformer\.h\.1\."):
        load_hf_into(ours, hf.state_dict())
    # Checked before anything is copied: a failed load leaves the model as it was.
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_untied_lm_head_is_refused():
    sd = dict(random_hf_model(1, 2, 16, 32, 101).state_dict())
    sd["lm_head.weight"] = sd["lm_head.weight"].clone() + 1.0
    with pytest.raises(CheckpointError, match="untied"):
        hf_to_gptdist_state_dict(sd)


def test_unsupported_hf_config_is_refused():
    with pytest.raises(CheckpointError, match="activation_function='relu'"):
        gptconfig_from_hf(GPT2Config(activation_function="relu"))


def test_config_round_trip():
    cfg = GPTConfig(n_layer=3, n_head=6, n_embd=96, block_size=48, vocab_size=1000)
    back = gptconfig_from_hf(hf_config_from_gptconfig(cfg))
    assert back == cfg


def test_from_pretrained_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))  # no cached gpt2, whatever this machine has
    start = time.monotonic()
    with pytest.raises(GptdistError, match=r"gpt2 is not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        from_pretrained("gpt2")
    # fails at once rather than through the hub's network retries (each a 10 s timeout); generous for a busy
    # machine (transformers is already imported above, so the bound holds only the cache lookup)
    assert time.monotonic() - start < 30


def test_from_pretrained_probes_the_hub_when_offline_is_not_set(tmp_path):
    """Without HF_HUB_OFFLINE, an unreachable hub (here: HF_ENDPOINT on a closed local port) must not
    send us into huggingface_hub's retry loop: the probe fails and we stop within seconds."""
    env = subprocess_env(HF_HOME=str(tmp_path / "empty_hf_home"), HF_ENDPOINT="https://127.0.0.1")
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    code = (
        "import time, sys\n"
        "from gptdist.hf import from_pretrained\n"
        "t = time.monotonic()\n"
        "try:\n    from_pretrained('gpt2-medium')\n"
        "except Exception as e:\n    print(type(e).__name__, e, file=sys.stderr)\n"
        "print(f'{time.monotonic() - t:.2f}')\n"
    )
    proc = python(["-c", code], env=env, timeout=60)
    assert "GptdistError gpt2-medium is not in the Hugging Face cache and 127.0.0.1:443 is not reachable" in proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) < 10


def test_from_pretrained_local_folder(tmp_path):
    hf = random_hf_model(*SHAPES[0])
    hf.save_pretrained(tmp_path / "tiny-gpt2")
    ours = from_pretrained(str(tmp_path / "tiny-gpt2")).eval()
    idx = tokens(SHAPES[0][4], SHAPES[0][3])
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=ATOL, rtol=0)


def test_from_pretrained_unknown_name():
    with pytest.raises(GptdistError, match="unknown model 'gpt3'"):
        from_pretrained("gpt3")


def test_from_pretrained_reads_a_mirror_folder_before_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    hf = random_hf_model(*SHAPES[1])
    hf.save_pretrained(tmp_path / "mirror" / "hf" / "gpt2")  # a stand-in with the name "gpt2"
    ours = from_pretrained("gpt2", mirror=tmp_path / "mirror", attention="naive").eval()
    assert ours.config.attention == "naive" and ours.config.n_layer == 2
    idx = tokens(SHAPES[1][4], SHAPES[1][3])
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=ATOL, rtol=0)
