"""Pipelines: wire the plain step functions together; no logic lives here that a step owns."""
