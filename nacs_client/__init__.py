"""Python SDK and CLI for the NaCS coreset service."""
