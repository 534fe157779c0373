# TEMPORARY stand-in until the eval branch lands (not committed)
import torch, torch.distributed as dist
from gptdist.data.loader import TokenLoader
@torch.no_grad()
def validation_loss(model, data_dir, batch_size, seq_len, num_batches, ctx, autocast=None):
    loader = TokenLoader(data_dir, "val", batch_size, seq_len, rank=0, world_size=1, seed=0)
    model.eval(); tot=0.0; n=0
    for i in range(num_batches):
        x,y = loader.next_batch()
        if i % ctx.world_size != ctx.rank: continue
        _, loss = model(x.to(ctx.device), y.to(ctx.device)); tot+=loss.item(); n+=1
    t=torch.tensor([tot,n],dtype=torch.float64)
    if ctx.has_group: dist.all_reduce(t)
    model.train(); return (t[0]/t[1]).item()
