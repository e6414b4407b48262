"""A BlueSnap-style card gateway sandbox for development, demos, tests and load."""
