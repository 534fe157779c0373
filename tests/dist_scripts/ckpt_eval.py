"""Load a checkpoint into a backend at this world size and print its validation loss.

    torchrun --nproc-per-node N tests/dist_scripts/ckpt_eval.py BACKEND CHECKPOINT DATA_DIR

Proves that a checkpoint saved by one backend at one world size loads into another (DCP reshards).
"""

import json
import sys

from gptdist import checkpoint as ckpt
from gptdist.config import build_config, resolve_model
from gptdist.dist import distributed
from gptdist.evaluate import validation_loss
from gptdist.model import GPT
from gptdist.optim import build_optimizer
from gptdist.parallel import parallelize
from gptdist.cli import exit_now

backend, path, data_dir = sys.argv[1:4]
cfg = build_config(None, {"backend": backend, "model.preset": "test", "data.dir": data_dir, "data.batch_size": 4, "data.seq_len": 32})
with distributed("cpu", 120, need_group=backend != "none") as ctx:
    model = GPT(resolve_model(cfg))
    b = parallelize(model, cfg, ctx)
    optimizer = build_optimizer(b.module, cfg.train, ctx.device)
    meta, _ = ckpt.load(ckpt.resolve(path), b.module, optimizer, resolve_model(cfg), ctx)
    loss = validation_loss(b.module, data_dir, 4, 32, 4, ctx)
    if ctx.is_main:
        print("RESULT " + json.dumps({"val_loss": loss, "step": meta["step"], "saved_world": meta["world_size"]}))
exit_now(0)  # skips interpreter shutdown: gloo's worker-thread abort (gptdist/cli.py)
