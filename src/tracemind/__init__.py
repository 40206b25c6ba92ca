"""TraceMind: flows, a durable shared-directory task queue, and the daemon that runs them."""

__version__ = "0.1.0"

__all__ = ["__version__"]
