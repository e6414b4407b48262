"""arbridge rules service."""
