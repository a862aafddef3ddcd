"""Shared pieces of typographic rendering: fonts (:mod:`mmsafe.render.fonts`) and the question →
statement rephraser (:mod:`mmsafe.render.rephrase`). Import the submodules; this package imports nothing."""
