"""Studies built on gptdist training runs (each a subpackage or module with one job)."""
