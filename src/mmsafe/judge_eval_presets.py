"""The published human-labelled sets: moved to :mod:`mmsafe.labelled.presets` (this name stays for
existing imports)."""

from mmsafe.labelled.presets import PRESETS, Preset, read_preset

__all__ = ["PRESETS", "Preset", "read_preset"]
