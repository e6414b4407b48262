"""The `arbridge` operators command line."""
