"""Corpora of inputs the bus must refuse, each with the refusal it documents."""
