"""Where studies are kept: the Optuna study store, and the process that writes to it."""
