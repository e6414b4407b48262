"""`python -m arbridge_gateway` starts the gateway service."""

from arbridge_gateway.app import main

main()
