"""Disaster Recovery: how far the DR site trails the primary, and the switch to it (govesb dr)."""
