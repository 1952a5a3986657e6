"""Where trials run: threads in this process, or a Dask cluster."""
