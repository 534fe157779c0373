"""Train a GPT. One process:  python launch/train.py --config configs/shakespeare_cpu.yaml
Many:  torchrun --standalone --nproc-per-node 8 launch/train.py --config configs/gpt2_fineweb.yaml --backend fsdp
Any config field can be overridden: --train.max_steps=50 --model.attention naive ..."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard  # noqa: E402
from gptdist.config import config_from_argv  # noqa: E402
from gptdist.dist import distributed  # noqa: E402
from gptdist.parallel import needs_group  # noqa: E402
from gptdist.trainer import train  # noqa: E402


def main(argv: list[str]) -> None:
    cfg = config_from_argv(argv)
    with distributed(cfg.train.device, cfg.dist.timeout_s, need_group=needs_group(cfg.backend)) as ctx:
        train(cfg, ctx)


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])
