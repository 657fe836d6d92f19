"""Step grids fitted per model, solver and NFE (`diffbench fit`), one module per method, and their cached artefacts.

`artefacts` keys and stores the fitted grids (sweeps read them through `steps=fitted`); `gits`, `oss` (dynamic
programmes over a fine grid), `search`, `ld3` (the run solver's calibration error, by coordinate search and by
gradient) and `ays` (the KL upper bound) are methods, and `pas` fits a few coordinates per step that correct the
solver's direction (its artefact keeps the Karras grid); `run` fits the grids a config asks for on calibration noise
disjoint from the evaluation's.
"""
