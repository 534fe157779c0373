"""GPT-2 BPE through tiktoken: reference ids, round trip, offline mirror seeding, fast offline failure."""

from __future__ import annotations

import time

import pytest

from gptdist import tokenizer
from gptdist.errors import TokenizerError


def test_reference_ids_and_special_tokens():
    enc = tokenizer.get_tokenizer()
    # tiktoken / OpenAI GPT-2 ids for build-nanogpt's sampling prompt
    assert enc.encode("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert enc.n_vocab == tokenizer.GPT2_VOCAB_SIZE == 50257
    assert enc.eot_token == tokenizer.EOT_TOKEN == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.encode_ordinary("<|endoftext|>") != [50256]  # plain text inside a document stays text


def test_round_trip_on_real_text(mirror):
    text = (mirror / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:20000]
    text += "\nUnicode too: naïve café — 東京 🙂\n"
    enc = tokenizer.get_tokenizer()
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert max(ids) < tokenizer.GPT2_VOCAB_SIZE
    assert len(ids) < len(text) / 2.5  # BPE merges: English averages ~4 characters per token


def test_mirror_seeds_an_empty_cache(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    assert not tokenizer.is_cached()
    tokenizer.get_tokenizer(mirror)
    assert tokenizer.is_cached()
    # tiktoken's own naming: sha1 of the URL (values from shared/data/SOURCES.md)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == ["6c7ea1a7e38e3a7f062df639a5b80947f075ffe6", "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"]


def test_mirror_without_bpe_files_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(TokenizerError, match="lacks gpt2_bpe/vocab.bpe"):
        tokenizer.get_tokenizer(tmp_path / "empty_mirror")


def test_offline_without_cache_or_mirror_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty_cache"))
    monkeypatch.delenv(tokenizer.MIRROR_ENV, raising=False)
    monkeypatch.setattr(tokenizer, "BPE_HOST", "nonexistent.invalid")  # the real probe runs; DNS fails
    start = time.monotonic()
    with pytest.raises(TokenizerError) as err:
        tokenizer.get_tokenizer()
    # one probe (net.reachable: 3 s timeout) rather than a download's retries; generous for a busy machine
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "unreachable" in message and tokenizer.MIRROR_ENV in message and "\n" not in message


def test_empty_cache_variable_still_uses_the_mirror(tmp_path, monkeypatch, mirror):
    # TIKTOKEN_CACHE_DIR="" turns tiktoken's cache off (it would always download): seeding must replace it
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    monkeypatch.setattr(tokenizer.tempfile, "gettempdir", lambda: str(tmp_path))
    assert not tokenizer.is_cached()
    tokenizer.get_tokenizer(mirror)
    assert tokenizer.os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path / "data-gym-cache")
    assert tokenizer.is_cached()
