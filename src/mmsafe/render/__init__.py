"""Shared pieces of typographic rendering: fonts (:mod:`mmsafe.render.fonts`), typesetting
(:mod:`mmsafe.render.typeset`) and the question → statement rephraser (:mod:`mmsafe.render.rephrase`).
Import the submodules; this package imports nothing."""
