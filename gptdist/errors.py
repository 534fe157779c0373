"""Errors that stop a run with a clear one-line message (launch scripts print them and exit 2)."""


class GptdistError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in gptdist."""


class ConfigError(GptdistError):
    """A bad config file, key, value or combination of values."""


class DataError(GptdistError):
    """A missing, truncated or corrupt data file or shard."""


class CheckpointError(GptdistError):
    """A missing, incomplete or incompatible checkpoint."""


class TokenizerError(GptdistError):
    """The GPT-2 BPE files could not be found or downloaded."""
