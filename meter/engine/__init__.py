"""The analytic engine: model specs, the matmul graph of a step, the count per method, token statistics,
the generic path on the meta device. Pure arithmetic: imports nothing of the rest of meter.
"""
