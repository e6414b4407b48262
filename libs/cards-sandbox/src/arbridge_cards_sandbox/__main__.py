"""`python -m arbridge_cards_sandbox` serves the card gateway sandbox."""

from arbridge_cards_sandbox.main import main

main()
