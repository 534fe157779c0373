"""Token data: llm.c-format shards, the prepare pipeline (sources -> shards) and the rank-aware loader.

    from gptdist.data import TokenLoader, open_shard, write_shard

    shards.py    the shard file format: write_shard, read_shard_header, open_shard
    sources.py   --source strings -> documents (tinyshakespeare, files, mirror:, hf:)
    prepare.py   documents -> tokenised shards + manifest.json (behind launch/prepare_data.py)
    loader.py    TokenLoader: rank-aware, resumable micro-batches from the shards
"""

from gptdist.data.shards import open_shard, read_shard_header, write_shard

__all__ = ["TokenLoader", "load_manifest", "verify_manifest", "open_shard", "read_shard_header", "write_shard"]


def __getattr__(name):
    # The loader imports torch; prepare_data.py does not need it, so load it only when asked for.
    if name in ("TokenLoader", "load_manifest", "verify_manifest"):
        from gptdist.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'gptdist.data' has no attribute {name!r}")
