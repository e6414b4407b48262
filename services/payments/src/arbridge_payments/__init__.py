"""arbridge payments service."""
