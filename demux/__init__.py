"""demux: separate mixed signals into their sources."""

__version__ = "0.1.0"
