"""`python -m arbridge_rules` starts the rules service."""

from arbridge_rules.app import main

main()
