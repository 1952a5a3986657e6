"""Where trials run: threads in this process (local), or a Dask cluster (dask)."""
