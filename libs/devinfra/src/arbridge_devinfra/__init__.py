"""Development infrastructure: PostgreSQL and NATS for tests and `make run`; the suite runner."""
