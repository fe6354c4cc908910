"""`/metrics` for Prometheus: the state read from the database at scrape time (`state`), the
counters of what happened (common/telemetry.py), and who may read them (`views`)."""
