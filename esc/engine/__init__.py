"""The transaction engine: every northbound write as a durable state machine."""
