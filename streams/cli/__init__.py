"""The ``govesb`` command line: its shared plumbing and the commands of the bus itself."""
