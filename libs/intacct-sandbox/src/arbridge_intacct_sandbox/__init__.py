"""A wire-compatible Sage Intacct XML gateway for development, demos, tests and load."""
