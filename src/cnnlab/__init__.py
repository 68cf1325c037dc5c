"""cnnlab: config-driven training of the classic CNN papers."""

__version__ = "0.1.0"
