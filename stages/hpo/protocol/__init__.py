"""The ask/tell protocol: which history each trial sees, the driver that walks it, and the
code identity that names a study."""
