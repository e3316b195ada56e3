"""The `[[plugin]]` tables: module, options, timeout (and an optional name), checked for
shape only; importing the module and checking its hooks is mta.policy.loader's job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mta.config.kinds import BAD, Duration, Errors, Tables

DEFAULT_TIMEOUT = 5.0
_KEYS = ("module", "options", "timeout", "name")


@dataclass(frozen=True)
class PluginSpec:
    module: str  # an importable module, or an entry point's name in the group "mta.plugins"
    options: dict = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT  # per hook call
    name: str = ""  # for logs; default: the module

    @property
    def label(self) -> str:
        return self.name or self.module


@dataclass(frozen=True)
class PluginTables(Tables):
    type_name = "array of tables (module, options, timeout, name)"
    expect = "an array of tables ([[plugin]] with module, options, timeout)"
    duplicate = 'distinct plugin names (set name = "..." on one of the two {dup!r})'
    keys = _KEYS

    def label(self, value):
        return value.label

    def one(self, path: str, table: dict, errs: Errors) -> Any:
        ok = True
        module = table.get("module")
        if not isinstance(module, str) or not module.strip() or any(c.isspace() for c in module.strip()):
            if "module" not in table:
                errs.items.append(f'{path}.module: missing (an importable module such as "acme_mail.routing", '
                                  'or an entry point in the group "mta.plugins")')
            else:
                errs.bad(f"{path}.module", "a module name such as \"acme_mail.routing\"", module)
            ok = False
        options = table.get("options", {})
        if not isinstance(options, dict):
            errs.bad(f"{path}.options", "a table (options = { key = value })", options)
            ok = False
        timeout = Duration().parse(f"{path}.timeout", table.get("timeout", DEFAULT_TIMEOUT), errs)
        name = table.get("name", "")
        if not isinstance(name, str):
            errs.bad(f"{path}.name", "a string", name)
            ok = False
        if not ok or timeout is BAD:
            return BAD
        return PluginSpec(module.strip(), dict(options), timeout, name)
