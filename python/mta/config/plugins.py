"""The `[[plugin]]` tables: module, options, timeout (and an optional name), checked for
shape only; importing the module and checking its hooks is mta.policy.loader's job."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from mta.config.kinds import BAD, Duration, Errors, Kind

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
class PluginTables(Kind):
    type_name = "array of tables (module, options, timeout, name)"

    def parse(self, path, raw, errs):
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            errs.bad(path, "an array of tables ([[plugin]] with module, options, timeout)", raw)
            return BAD
        out = [self._one(f"{path}[{i}]", t, errs) for i, t in enumerate(raw)]
        names = [p.label for p in out if p is not BAD]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            errs.bad(path, f'distinct plugin names (set name = "..." on one of the two {dup!r})', dup)
        return BAD if any(v is BAD for v in out) or len(set(names)) < len(names) else tuple(out)

    @staticmethod
    def _one(path: str, table: dict, errs: Errors) -> Any:
        ok = True
        for key in table:
            if key not in _KEYS:
                close = difflib.get_close_matches(key, _KEYS, 1, 0.6)
                errs.unknown(f"{path}.{key}", f"{path}.{close[0]}" if close else None)
                ok = False
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

    def render(self, value):
        return json.dumps([])
