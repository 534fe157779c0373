"""One main-job-shaped step (4 layers x 128 wide, vocab 50304, batch 8x128), 12 times, with glibc's default
allocator settings (`default`) and with freed memory kept in the heap (`heap`, as gptdist/cpu_memory.py does).

    PYTHONPATH=. OMP_NUM_THREADS=2 python docs/results/cpu_memory/probe.py default
    PYTHONPATH=. OMP_NUM_THREADS=2 python docs/results/cpu_memory/probe.py heap
"""
import ctypes, os, resource, sys, time
import torch
if sys.argv[1] == "heap":
    libc = ctypes.CDLL("libc.so.6")
    print("mallopt", libc.mallopt(-4, 0), libc.mallopt(-1, 2**30))  # M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB
torch.set_num_threads(2)
from gptdist.model import GPT, GPTConfig
m = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=50304))
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x = torch.randint(0, 50304, (8, 128)); y = torch.randint(0, 50304, (8, 128))
ts=[]
for i in range(12):
    r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
    _, loss = m(x, y); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    t = time.perf_counter() - t0; r1 = resource.getrusage(resource.RUSAGE_SELF)
    ts.append((t, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime))
import statistics
print(sys.argv[1], "median step ms", round(statistics.median(t for t,_,_ in ts[3:])*1000), "minflt/step", statistics.median(f for _,f,_ in ts[3:]), "sys s/step", round(statistics.median(s for _,_,s in ts[3:]),3))
