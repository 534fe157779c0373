"""Train a GPT. One process:  python launch/train.py --config configs/shakespeare_cpu.yaml
Many:  torchrun --standalone --nproc-per-node 8 launch/train.py --config configs/gpt2_fineweb.yaml --backend fsdp
Any config field can be overridden: --train.max_steps=50 --model.attention naive ..."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard, usage_or_help  # noqa: E402
from gptdist.config import config_from_argv, config_reference  # noqa: E402
from gptdist.dist import distributed  # noqa: E402
from gptdist.parallel import needs_group  # noqa: E402
from gptdist.trainer import train  # noqa: E402


USAGE = """usage: python launch/train.py --config FILE [--section.key=VALUE ...]
       torchrun --standalone --nproc-per-node N launch/train.py --config FILE [--section.key=VALUE ...]

Train a GPT. Settings: the defaults below <- the YAML file <- the overrides, e.g. --train.max_steps=50,
--model.attention naive, --backend ddp (a bare --flag means true). An unknown key or a wrong type stops
before anything runs. Config fields (flag, type, default, meaning):"""


def main(argv: list[str]) -> None:
    usage_or_help(argv, USAGE, config_reference)
    cfg = config_from_argv(argv)
    with distributed(cfg.train.device, cfg.dist.timeout_s, need_group=needs_group(cfg.backend)) as ctx:
        train(cfg, ctx)


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
