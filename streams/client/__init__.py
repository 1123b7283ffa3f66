"""For an institution's system on the bus: the publisher SDK, reading topics, ``govesb tail``."""
