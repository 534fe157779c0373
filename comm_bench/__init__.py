"""comm_bench: collective sweeps with nccl-tests conventions (see docs/comm_bench.md).

One harness (`comm_bench.harness`) behind one thin script per collective; run them under torchrun.
"""
