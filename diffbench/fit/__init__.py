"""Step grids fitted per model, solver and NFE (`diffbench fit`), one module per method, and their cached artefacts.

`artefacts` keys and stores the fitted grids (sweeps read them through `steps=fitted`); `gits` is a
method; `run` fits the grids a config asks for on calibration noise disjoint from the evaluation's.
"""
