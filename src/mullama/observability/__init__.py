"""Metrics, logs and traces. Importing this package pulls in nothing optional."""
