"""The exception tree: everything mta raises on purpose is an MtaError. Errors change
type once, at a boundary (the spool's native error becomes SpoolError here); this
module imports nothing from the extension, so it works before the extension is built."""

from __future__ import annotations

__all__ = ["MtaError", "ConfigError", "SpoolError", "ProtocolError"]


class MtaError(Exception):
    """Root of every exception mta raises deliberately."""


class ConfigError(MtaError):
    """The configuration is unusable. `errors` lists every problem found,
    one human-readable line each (dotted key, offending value, expectation),
    so an operator fixes them all in one round instead of one per restart."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class SpoolError(MtaError):
    """A spool operation failed: I/O, bad record, shard lock held elsewhere.
    Raised by the server when it wraps the native `_native.SpoolError`
    (keep the native one as `__cause__`)."""


class ProtocolError(MtaError):
    """A peer broke the SMTP protocol in a way the session cannot recover
    from (e.g. a remote server's unparseable reply)."""
