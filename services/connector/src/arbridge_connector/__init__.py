"""arbridge connector service."""
