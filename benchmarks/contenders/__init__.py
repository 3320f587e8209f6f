"""Training-throughput contenders: one module each, run in a fresh process by benchmarks/run.py."""
