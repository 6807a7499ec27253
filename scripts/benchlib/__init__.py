"""Pieces of ``scripts/bench.py``: the S3 server, the mounts, the workloads and the report."""
