"""Clicks: capture on the hot path, the pipeline into PostgreSQL (one Click definition), the drainer."""
