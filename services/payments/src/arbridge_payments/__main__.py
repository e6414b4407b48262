"""`python -m arbridge_payments` starts the payments service."""

from arbridge_payments.app import main

main()
