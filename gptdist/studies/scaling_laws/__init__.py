"""Scaling laws: how the final loss depends on model size N, tokens D and compute C (Kaplan et al. 2020;
Hoffmann et al. 2022). Not to be confused with gptdist/studies/scaling/, which is about throughput over GPUs.

    plan.py    sweep spec (YAML) -> runs: for each budget C and shape, D = C / FLOPs-per-token
    vocab.py   a GPT-2-token data set cut to its K most frequent ids (tiny models on a CPU)
    sweep.py   runs the plan as ordinary gptdist training runs, resumable, one progress bar
    fits.py    IsoFLOP parabolas + power laws (Approach 2), L(N, D) = E + A/N^a + B/D^b (Approach 3)
    report.py  plots and a markdown report
"""
