"""The single-device GPT: sizes, init, attention paths, checkpointing, tying, training, sampling. CPU, fast."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from gptdist.model import GPT, PRESETS, GPTConfig, pad_vocab

TEST = PRESETS["test"]  # n_layer 2, n_head 2, n_embd 32, block_size 64, vocab 96


def meta_model(cfg: GPTConfig) -> GPT:
    """Build on the meta device: shapes only, no memory, no init cost (GPT-2 XL counts in milliseconds)."""
    with torch.device("meta"):
        return GPT(cfg)


def batch(cfg: GPTConfig, B: int = 2, T: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = T or cfg.block_size
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    return data[:, :-1], data[:, 1:]


# Published GPT-2 sizes with the tied head counted once (as Hugging Face's num_parameters() reports).
@pytest.mark.parametrize(
    "name,expected",
    [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_gpt2_family_parameter_counts(name, expected):
    assert meta_model(PRESETS[name]).num_params() == expected


def test_gpt2_small_counts_built_on_cpu():
    model = GPT(PRESETS["gpt2"])
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


def test_padded_vocab_parameter_count():
    assert pad_vocab(50257) == 50304
    padded = dataclasses.replace(PRESETS["gpt2"], vocab_size=pad_vocab(50257))
    # 47 extra rows of 768 in the one tied matrix: 124,439,808 + 36,096.
    assert meta_model(padded).num_params() == 124_475_904


def test_loss_at_init_is_uniform_guess():
    cfg = dataclasses.replace(PRESETS["gpt2-tiny"], block_size=64)  # vocab 50257
    torch.manual_seed(0)
    model = GPT(cfg)
    idx, targets = batch(cfg, B=2)
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 64, 50257)
    assert loss.item() == pytest.approx(math.log(50257), abs=0.3)  # ln(50257) = 10.825


def test_sequence_longer_than_block_size_is_refused():
    model = GPT(TEST)
    with pytest.raises(ValueError, match="exceeds block_size 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def grads_of(model: GPT, idx, targets):
    model.zero_grad(set_to_none=True)
    logits, loss = model(idx, targets)
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_run(a, b, atol=1e-5, rtol=1e-4):
    (logits_a, loss_a, grads_a), (logits_b, loss_b, grads_b) = a, b
    torch.testing.assert_close(logits_a, logits_b, atol=atol, rtol=rtol)
    torch.testing.assert_close(loss_a, loss_b, atol=atol, rtol=rtol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=rtol, msg=name)


def test_naive_and_sdpa_attention_agree():
    cfg = dataclasses.replace(TEST, n_head=4, attention="sdpa")
    torch.manual_seed(0)
    sdpa = GPT(cfg)
    naive = GPT(dataclasses.replace(cfg, attention="naive"))
    naive.load_state_dict(sdpa.state_dict())
    idx, targets = batch(cfg, B=3)
    assert_same_run(grads_of(sdpa, idx, targets), grads_of(naive, idx, targets))
    # Shorter than block_size: the naive path must crop its mask.
    assert_same_run(grads_of(sdpa, idx[:, :17], targets[:, :17]), grads_of(naive, idx[:, :17], targets[:, :17]))


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_activation_checkpointing_changes_nothing_but_memory(attention):
    cfg = dataclasses.replace(TEST, attention=attention)
    torch.manual_seed(0)
    plain = GPT(cfg)
    checkpointed = GPT(dataclasses.replace(cfg, activation_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    idx, targets = batch(cfg)
    calls = {"plain": 0, "checkpointed": 0}
    # Pre-hooks: the recomputation stops as soon as it has rebuilt what backward needs (torch's
    # checkpoint "early stop"), so a hook at the end of the block would not see it.
    plain.transformer.h[0].register_forward_pre_hook(lambda *_: calls.__setitem__("plain", calls["plain"] + 1))
    checkpointed.transformer.h[0].register_forward_pre_hook(
        lambda *_: calls.__setitem__("checkpointed", calls["checkpointed"] + 1))
    assert_same_run(grads_of(plain, idx, targets), grads_of(checkpointed, idx, targets), atol=1e-6, rtol=1e-5)
    # Checkpointing really happened: the block's insides ran again during backward.
    assert calls == {"plain": 1, "checkpointed": 2}


def test_residual_projections_use_scaled_init():
    cfg = PRESETS["gpt2-tiny"]  # n_layer 4: residual std 0.02 / sqrt(8) = 0.00707
    torch.manual_seed(0)
    model = GPT(cfg)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.count_nonzero(block.attn.c_proj.bias) == 0
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_weight_tying_shares_storage_and_sums_both_gradients():
    torch.manual_seed(0)
    tied = GPT(TEST)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert tied.lm_head.weight.data_ptr() == tied.transformer.wte.weight.data_ptr()
    assert "lm_head.weight" in tied.state_dict()  # both names saved, one tensor

    # Reference: the same model with the head untied. The tied matrix's gradient must be the sum of
    # the embedding's and the head's gradients (autograd accumulates both uses into one .grad).
    untied = copy.deepcopy(tied)
    untied.lm_head.weight = torch.nn.Parameter(untied.transformer.wte.weight.detach().clone())
    idx, targets = batch(TEST)
    tied(idx, targets)[1].backward()
    untied(idx, targets)[1].backward()
    assert tied.lm_head.weight.grad is tied.transformer.wte.weight.grad
    expected = untied.transformer.wte.weight.grad + untied.lm_head.weight.grad
    torch.testing.assert_close(tied.transformer.wte.weight.grad, expected, atol=1e-7, rtol=1e-5)
    assert untied.transformer.wte.weight.grad.abs().sum() > 0  # both parts are really there
    # One update moves the head and the embedding together.
    torch.optim.SGD(tied.parameters(), lr=0.1).step()
    assert tied.lm_head.weight is tied.transformer.wte.weight


def test_overfits_one_batch():
    torch.manual_seed(0)
    cfg = dataclasses.replace(TEST, block_size=32)
    model = GPT(cfg)
    idx, targets = batch(cfg, B=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(300):
        _, loss = model(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.5:
            break
    assert loss.item() < 0.5, f"loss {loss.item():.3f} after {step + 1} steps"


def test_generation_is_deterministic_for_a_seed_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    model = GPT(TEST)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    rng_before = torch.get_rng_state()
    a = model.generate(prompt, max_new_tokens=20, temperature=1.0, seed=123)
    b = model.generate(prompt, max_new_tokens=20, temperature=1.0, seed=123)
    c = model.generate(prompt, max_new_tokens=20, temperature=1.0, seed=124)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert a.shape == (2, 23) and torch.equal(a[:, :3], prompt)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert model.training  # generate() restores train mode


def test_temperature_zero_is_greedy():
    torch.manual_seed(0)
    model = GPT(TEST).eval()
    prompt = torch.tensor([[7, 8, 9]])
    out = model.generate(prompt, max_new_tokens=10, temperature=0)
    expected = prompt
    with torch.no_grad():
        for _ in range(10):
            logits, _ = model(expected)
            expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)


def test_vocab_limit_never_picks_padding_columns():
    """A padded vocabulary's extra columns are not tokens: with vocab_limit they are never generated, even
    when their logits are the largest (as the zero rows of GPT-2 weights loaded into V = 50304 can be)."""
    torch.manual_seed(0)
    model = GPT(TEST).eval()
    limit = TEST.vocab_size - 6
    boost = torch.zeros(TEST.vocab_size)
    boost[limit:] = 100.0  # the 6 "padding" columns win every argmax and every sample
    model.lm_head.register_forward_hook(lambda module, inputs, out: out + boost)
    prompt = torch.tensor([[1, 2, 3]])
    assert (model.generate(prompt, 8, temperature=0)[:, 3:] >= limit).all()  # without the limit: padding
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "seed": 0}, {"temperature": 1.0, "top_k": 5, "seed": 1}):
        assert (model.generate(prompt, 8, vocab_limit=limit, **kwargs)[:, 3:] < limit).all()


def test_top_k_one_is_greedy_and_context_is_cropped():
    torch.manual_seed(0)
    model = GPT(TEST)
    prompt = torch.randint(0, TEST.vocab_size, (1, TEST.block_size))  # already a full context
    greedy = model.generate(prompt, max_new_tokens=5, temperature=0)
    top1 = model.generate(prompt, max_new_tokens=5, temperature=1.0, top_k=1, seed=0)
    assert greedy.shape == (1, TEST.block_size + 5)
    assert torch.equal(greedy, top1)


def test_model_summary_table_counts_the_built_models():
    from gptdist.model_summary import preset_rows

    rows = {r["name"]: r for r in preset_rows()}
    assert rows.keys() == PRESETS.keys()
    assert rows["gpt2"]["params"] == 124_439_808
    assert rows["gpt2"]["params_padded"] == 124_475_904
    assert rows["gpt2"]["params_non_embedding"] == 123_653_376
    assert rows["gpt2"]["flops_per_token"] == 855_166_464
