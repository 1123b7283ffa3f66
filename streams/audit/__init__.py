"""The hash-chained audit log: writing its records and verifying a chain."""
