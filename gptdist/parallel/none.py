"""`none`: one process, no communication. The reference every other backend is checked against."""

from gptdist.parallel.base import Backend


class NoneBackend(Backend):
    name = "none"
