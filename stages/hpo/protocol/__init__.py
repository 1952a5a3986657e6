"""The ask/tell protocol: the history each trial sees, the driver, its writes, the code identity."""
