"""arbridge sync service."""
