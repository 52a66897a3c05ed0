"""rattn-eval: long-context evaluation for local-global attention models."""

__version__ = "0.1.0"
