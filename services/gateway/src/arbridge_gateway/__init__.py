"""arbridge gateway service."""
