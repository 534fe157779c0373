"""gptdist.dist: the device a rank gets and the restart-attempt prefix of the rendezvous store."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from gptdist.dist import _attempt_store, choose_device
from gptdist.errors import ConfigError
from gptdist.net import free_port


def test_device_choice_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    assert choose_device("cpu", local_rank=3) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device is 'cuda' but no CUDA device is available"):
        choose_device("cuda")


def test_each_local_rank_gets_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert choose_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(ConfigError, match="local rank 2 has no GPU: only 2 visible"):
        choose_device("auto", local_rank=2)


def test_store_keys_are_prefixed_by_the_restart_attempt(monkeypatch):
    port = free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    store = _attempt_store(datetime.timedelta(seconds=30))
    store.set("peer", "here")
    # A plain client of the same server sees the key under the attempt's prefix, and not without it.
    raw = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=30))
    assert raw.get("gptdist/attempt_3/peer") == b"here"
    assert raw.check(["gptdist/attempt_3/peer"]) and not raw.check(["peer"])
