"""Cohorts and the command line: `batch.run_batch` and its local and Dask workers, one study's task and
record, output files, progress display, and the `veloxseg` CLI (`cli.main`; `python -m VeloxSegSlicerLib.engine`).

May import everything else in the engine; nothing in `inputs` or `inference` imports it.
"""
