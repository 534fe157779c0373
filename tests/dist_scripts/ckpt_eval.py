"""Load checkpoints into a backend at this world size and print their validation losses.

    torchrun --nproc-per-node N tests/dist_scripts/ckpt_eval.py BACKEND DATA_DIR CHECKPOINT [CHECKPOINT ...]

One RESULT line per checkpoint, in order (each into a freshly built model and optimizer; one launch for all
saves the tests a torchrun start per checkpoint).
Proves that a checkpoint saved by one backend at one world size loads into another (DCP reshards).
Also prints `optim_abs_sum`: the sum of |exp_avg| and |exp_avg_sq| over the loaded optimizer state in its
per-parameter form, the same for every backend and world size when the moments were gathered/scattered right.
"""

import json
import sys

from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from gptdist import checkpoint as ckpt
from gptdist.config import build_config, resolve_model
from gptdist.dist import distributed
from gptdist.evaluate import validation_loss
from gptdist.model import GPT
from gptdist.parallel import needs_group, parallelize
from gptdist.cli import exit_now

backend, data_dir, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = build_config(None, {"backend": backend, "model.preset": "test", "data.dir": data_dir, "data.batch_size": 4, "data.seq_len": 32})
with distributed("cpu", 120, need_group=needs_group(backend)) as ctx:
    for path in paths:
        model = GPT(resolve_model(cfg))
        b = parallelize(model, cfg, ctx)
        optimizer = b.build_optimizer(cfg.train, ctx.device)
        with b.checkpoint_optimizer(optimizer) as per_parameter:
            meta, _ = ckpt.load(ckpt.resolve(path), b.module, per_parameter, resolve_model(cfg), ctx)
        with b.checkpoint_optimizer(optimizer) as per_parameter:  # read back from the backend's own layout
            _, optim_sd = get_state_dict(b.module, per_parameter, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        loss = validation_loss(b.module, data_dir, 4, 32, 4, ctx)
        if ctx.is_main:
            moments = [s[k] for s in optim_sd["state"].values() for k in ("exp_avg", "exp_avg_sq")]
            optim_abs_sum = sum(float(m.double().abs().sum()) for m in moments)
            print("RESULT " + json.dumps({"val_loss": loss, "step": meta["step"], "saved_world": meta["world_size"],
                                          "optim_abs_sum": optim_abs_sum, "optim_tensors": len(moments)}), flush=True)
exit_now(0)  # skips interpreter shutdown: gloo's worker-thread abort (gptdist/cli.py)
