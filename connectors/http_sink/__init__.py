"""The HTTP sink: delivery topics to legacy HTTP endpoints, its dead letters and their replay."""
