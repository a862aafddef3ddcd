"""Shared pieces of typographic rendering: fonts (:mod:`mmsafe.render.fonts`), typesetting
(:mod:`mmsafe.render.typeset`), the question → statement rephraser (:mod:`mmsafe.render.rephrase`) and
image denoisers (:mod:`mmsafe.render.denoise`).
Import the submodules; this package imports nothing."""
