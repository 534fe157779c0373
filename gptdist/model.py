"""GPT-2, written from scratch, on one device.

This file knows nothing about torch.distributed: the data-parallel backends in `gptdist/parallel/`
wrap the model, they never change it. Parameter names follow GPT-2's own (`wte`, `wpe`, `h.{i}.attn.c_attn`,
`ln_f`, ...) so that Hugging Face checkpoints map onto it one to one (see `gptdist/hf.py`).

Shapes: B batch, T sequence length, C = n_embd, nh = n_head, hs = C // nh (head size), V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257  # GPT-2's BPE; 50304 = next multiple of 64, friendlier to GPU matmuls
    dropout: float = 0.0
    bias: bool = True
    attention: Literal["naive", "sdpa"] = "sdpa"
    activation_checkpointing: bool = False


PRESETS: dict[str, GPTConfig] = {
    # The published GPT-2 family (Radford et al. 2019); 124M/350M/774M/1558M parameters.
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    # Small shapes for CPU work. They keep GPT-2's vocabulary so real tokens fit.
    "gpt2-mini": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256),  # ~30M with V=50304
    "gpt2-tiny": GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256),  # ~16M
    # For unit tests: a tiny vocabulary so models build and step in milliseconds.
    "test": GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=96),
}


def pad_vocab(vocab_size: int, multiple: int = 64) -> int:
    """50257 -> 50304: rounding V up lets GPU matmul kernels use their fast tile sizes."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attention = config.attention
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALED_INIT = True
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        # Lower-triangular mask for the naive path; a buffer so it follows .to(device), not a parameter.
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("causal_mask", mask.view(1, 1, config.block_size, config.block_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.attention == "sdpa":
            # One fused kernel (flash attention on recent GPUs): never materialises the (T, T) matrix.
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            # The readable baseline: the full (B, nh, T, T) attention matrix in memory.
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
            att = att.masked_fill(~self.causal_mask[:, :, :T, :T], float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALED_INIT = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding (V, C)
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned positions (block_size, C)
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (GPT-2, Press & Wolf 2017): the output projection is the token embedding.
        # One Parameter, two modules: 38.6M of GPT-2 small's 124M parameters are this matrix.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_SCALED_INIT", False):
                # Each block adds two residual branches; scaling their output projections by
                # 1/sqrt(2 * n_layer) keeps the residual stream's variance from growing with depth.
                std *= (2 * self.config.n_layer) ** -0.5
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied wte/lm_head matrix once). non_embedding drops the
        position table, as the MFU formula wants (`gptdist.flops`)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """idx, targets: (B, T) token ids. Returns logits (B, T, V) and the mean cross-entropy
        (or None without targets)."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            if self.config.activation_checkpointing and self.training:
                # Keep only the block's input; recompute its activations during backward.
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            # reshape, not view: targets are often a slice such as data[:, 1:] (not contiguous).
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        vocab_limit: Optional[int] = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by sampling max_new_tokens tokens. temperature 0 means greedy.
        With a seed the samples are the same on every call (a private generator, global RNG untouched).
        vocab_limit: only ids below it are tokens (the tokenizer's size): a padded vocabulary's extra
        columns (50257..50303) are never picked, whatever their logits (0 after loading GPT-2's weights)."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=idx.device)
            generator.manual_seed(seed)
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size :]  # crop to the context the model can see
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :vocab_limit].float()  # (B, V): only the last position predicts the next token
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k > 0:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, next_id), dim=1)
        self.train(was_training)
        return idx
