"""Data: SQL sources, content-addressed snapshots in object storage, data contracts."""
