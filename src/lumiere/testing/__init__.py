"""Tiny stand-ins for the published checkpoints, built offline from their configs (tests, benchmarks)."""

from lumiere.testing.tiny_sd import SD_FAMILIES, make_tiny_sd_folder

__all__ = ["SD_FAMILIES", "make_tiny_sd_folder"]
