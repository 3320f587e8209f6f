"""Plan a training run before it starts (params, FLOPs, data, memory, time) and check the plan afterwards."""
