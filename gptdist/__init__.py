"""gptdist: a study toolkit for distributed training on raw torch.distributed."""

__version__ = "0.1.0"
