"""`python -m arbridge_cli` runs the `arbridge` command."""

from arbridge_cli.main import main

main()
