"""phbench core: method contract, registries, shared trainer, run store and CLI."""

__version__ = "0.1.0"
