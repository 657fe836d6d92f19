"""The sweep engine, one module per stage of a point's pipeline.

points (grid -> frozen resolved points) -> sampling (diffbench.sampling: batches, common noise,
measured NFE) -> references (RK45 reference solutions) -> metrics (diffbench.metrics.suite) ->
rows (ResultRow assembly) -> sweep (run the points, append to the table); progress shows it.
"""
