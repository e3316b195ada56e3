"""Configuration: value kinds (`kinds`) at the bottom, routing and listener kinds (`routes`,
`listeners`) on them, the schema with load/check (`schema`) on top. Re-exports the
schema's public names but `schema()`, which would hide the submodule of that name."""

from mta.config.schema import (  # noqa: F401
    DEFAULT_SPOOL_DIR, AuthConfig, Config, Key, LimitsConfig, Listener, LogConfig, PrivilegesConfig, SmtpConfig,
    SpoolConfig, TlsConfig, check, load, schema_keys,
)
