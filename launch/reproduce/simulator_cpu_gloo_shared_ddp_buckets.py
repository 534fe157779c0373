"""DDP's bucket layout for the study's model (gpt2-tiny, vocab 50304) at bucket_cap_mb 25 and 5: the sizes
at construction and after DDP rebuilds its buckets in gradient-ready order (after the first iteration).
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 launch/reproduce/simulator_cpu_gloo_shared_ddp_buckets.py
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from gptdist.model import GPT, PRESETS  # noqa: E402

dist.init_process_group("gloo")
cfg = dataclasses.replace(PRESETS["gpt2-tiny"], vocab_size=50304, block_size=128)
x = torch.randint(0, cfg.vocab_size, (2, 64))
for cap in (25, 5):
    torch.manual_seed(0)
    ddp = DDP(GPT(cfg), bucket_cap_mb=cap, gradient_as_bucket_view=True, broadcast_buffers=False)
    for i in range(3):
        _, loss = ddp(x, x)
        loss.backward()
    d = ddp._get_ddp_logging_data()
    if dist.get_rank() == 0:
        print(f"torch {torch.__version__}, bucket_cap_mb={cap}: bucket bytes at construction {d.get('bucket_sizes')}; "
              f"rebuilt ({d.get('has_rebuilt_buckets')}) in ready order: {d.get('rebuilt_bucket_sizes')}")
dist.barrier()
