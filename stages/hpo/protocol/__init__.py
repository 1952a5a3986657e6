"""The ask/tell protocol: the history each trial sees, the driver that walks it, what it writes, and the code identity that names a study."""
