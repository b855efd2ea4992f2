"""dsexport's benchmarks, run as modules from the repository root: ``python -m bench.run``, ``python -m bench.upload``.

``run`` measures export speed against hand-written baselines, peak memory and the incremental no-op; ``upload``
measures each destination's upload against its SDK. ``report`` owns docs/benchmarks.md, where both write.
"""
