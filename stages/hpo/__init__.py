"""The pipeline's library: the five stage scripts in stages/ are thin layers over it."""
