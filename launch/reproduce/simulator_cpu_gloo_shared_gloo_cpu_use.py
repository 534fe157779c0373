"""How much CPU a gloo all-reduce uses (process CPU time of all threads / wall time), and whether a rank
that waits for a late peer burns CPU (busy-polls) or sleeps. Evidence for the simulator's cpu_overlap term.
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 launch/reproduce/simulator_cpu_gloo_shared_gloo_cpu_use.py
"""
import time

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()


def timed(fn):
    dist.barrier()
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


for nbytes in (12_766_208, 51_511_296):  # the manual backend's buckets 1 and 2 (gpt2-tiny, vocab 50304)
    x = torch.ones(nbytes // 4)
    dist.all_reduce(x)
    runs = [timed(lambda: dist.all_reduce(x)) for _ in range(5)]
    wall, cpu = sorted(runs)[len(runs) // 2]
    print(f"rank {rank}: all_reduce {nbytes / 1e6:.1f} MB, both arrive together: wall {wall:.1f} ms, "
          f"process CPU {cpu:.1f} ms ({cpu / wall:.2f} cores)")
x = torch.ones(12_766_208 // 4)
late = 1000.0  # ms: the last rank arrives this late


def late_peer():
    if rank == dist.get_world_size() - 1:
        time.sleep(late / 1e3)
    dist.all_reduce(x)


wall, cpu = timed(late_peer)
print(f"rank {rank}: all_reduce 12.8 MB, last rank {late:.0f} ms late: wall {wall:.1f} ms, process CPU {cpu:.1f} ms")
dist.destroy_process_group()
