"""Small token datasets for tests, written in the same format as launch/prepare_data.py."""

from gptdist.data.synthetic import make_token_dataset  # noqa: F401
