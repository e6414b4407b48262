"""`python -m arbridge_connector` starts the connector service."""

from arbridge_connector.app import main

main()
