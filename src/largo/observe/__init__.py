"""Observability: progress bars, JSONL metrics, throughput and MFU."""
