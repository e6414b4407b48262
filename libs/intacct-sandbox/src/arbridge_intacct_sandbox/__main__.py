"""`python -m arbridge_intacct_sandbox` serves the Intacct sandbox."""

from arbridge_intacct_sandbox.main import main

main()
