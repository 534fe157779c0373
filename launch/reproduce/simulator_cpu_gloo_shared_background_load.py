"""Sample, once a second, how many cores processes OTHER than ours use (ours: a command line containing
MARK, e.g. runs/sim2), so each validation job can be labelled with the load it shared the machine with.
    python launch/reproduce/simulator_cpu_gloo_shared_background_load.py runs/sim2 runs/sim2/background.jsonl &"""

import json
import sys
import time

import psutil

mark, out = sys.argv[1], sys.argv[2]
last: dict[int, tuple[float, bool]] = {}
t_last = time.time()
with open(out, "a") as f:
    while True:
        time.sleep(1.0)
        now, other, ours, seen = time.time(), 0.0, 0.0, {}
        for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            try:
                ct = p.info["cpu_times"]
                cpu = ct.user + ct.system
                mine = mark in " ".join(p.info["cmdline"] or []) or p.pid == psutil.Process().pid
            except (psutil.Error, TypeError):
                continue
            seen[p.pid] = (cpu, mine)
            if p.pid in last:
                delta = max(0.0, cpu - last[p.pid][0])
                if mine:
                    ours += delta
                else:
                    other += delta
        dt = now - t_last
        f.write(json.dumps({"t": now, "other_cores": other / dt, "our_cores": ours / dt}) + "\n")
        f.flush()
        last, t_last = seen, now
