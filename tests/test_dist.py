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


def test_a_fake_world_is_one_process_playing_rank_0_of_n(monkeypatch):
    """GPTDIST_FAKE_WORLD=3: rank 0 of a world of 3 on torch's fake process group, in this one process."""
    from gptdist.dist import distributed, teardown

    teardown()  # a group an earlier test in this process left behind
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GPTDIST_FAKE_WORLD", "3")
    with distributed("cpu") as ctx:
        assert (ctx.rank, ctx.world_size, ctx.backend) == (0, 3, "fake")
        assert dist.get_world_size() == 3 and dist.get_rank() == 0
        x = torch.ones(4)
        dist.all_reduce(x)  # moves nothing: the values of a rehearsal are not a real run's
        assert x.tolist() == [1.0] * 4
    assert not dist.is_initialized()


@pytest.mark.parametrize("value, torchrun, message", [
    ("two", False, "must be a world size >= 1"),
    ("0", False, "must be a world size >= 1"),
    ("2", True, "not torchrun"),
])
def test_a_bad_fake_world_is_refused(monkeypatch, value, torchrun, message):
    from gptdist.dist import init_distributed

    monkeypatch.setenv("GPTDIST_FAKE_WORLD", value)
    if torchrun:
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=message):
        init_distributed("cpu")
