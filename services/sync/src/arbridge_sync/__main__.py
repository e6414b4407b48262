"""`python -m arbridge_sync` starts the sync service."""

from arbridge_sync.app import main

main()
