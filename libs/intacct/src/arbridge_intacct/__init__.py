"""The Sage Intacct XML API client library (usable without the connector service)."""
