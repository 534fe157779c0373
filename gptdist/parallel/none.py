"""`none`: one process, no communication. The reference every other backend is checked against."""

from gptdist.parallel.base import Backend, NoOptions


class NoneBackend(Backend):
    name = "none"
    needs_group = False  # runs without torch.distributed; refuses a world size above 1
    Options = NoOptions
