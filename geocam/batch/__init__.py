"""Many scenes: ``geocam batch``, in this process or on a Dask cluster.

:mod:`~geocam.batch.manifest` says which scenes (arguments, globs, a CSV or JSON-lines
manifest), :mod:`~geocam.batch.run` explains each one idempotently and writes the summary, and
:mod:`~geocam.batch.dask` runs the same per-scene function on Dask workers, the model loaded
once per worker. Nothing here imports torch or dask until a batch runs.
"""
