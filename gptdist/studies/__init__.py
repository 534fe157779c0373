"""Studies: what sits on top of training and measures it. Each reads the trainer's step or its run folders
and writes a results folder (docs/results/<topic>_<hardware>/):

- `ladder/`: the optimisation ladder, one change per rung, each rung's step timed (spec / runner / report);
- `scaling/`: the T/N study, step time vs world size per backend (plan and launch / analysis / report);
- `simulator/`: predicts the step at N ranks from one rank's timeline and a comm model (timeline /
  comm_model / schedule);
- `scaling_laws/`: loss against training compute (the loss-vs-compute study);
- `throughput.py`: tokens/s and MFU of the training step;
- `alphabeta.py`: alpha-beta fits of collective times (from comm_bench);
- `plotting.py`: the studies' figures and the helpers they share.
"""
