"""mta: a mail transfer agent. Python owns connections, policy, routing and configuration;
the Rust extension `mta._native` owns SMTP parsing, header rewriting and the spool."""

__version__ = "0.1.0"
__all__ = ["__version__"]
