"""Plugins from `[[plugin]]`: import (a module, or an entry point of the group "mta.plugins"),
find the hooks (module functions, or methods of a class `Plugin` made with the options), check
their names and signatures. Every problem is one ConfigError line naming the plugin."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import logging
import types
from typing import Any, Iterable

from mta.config.plugins import DEFAULT_TIMEOUT, PluginSpec
from mta.errors import ConfigError
from mta.plugin import HOOKS, LIFECYCLE
from mta.policy.chain import Entry

log = logging.getLogger("mta.plugin")

ENTRY_POINT_GROUP = "mta.plugins"
_KNOWN = tuple(HOOKS) + LIFECYCLE
_ARGS = {
    "on_connect": "conn", "on_helo": "conn, name", "on_auth": "conn, user", "on_mail": "tx, sender",
    "on_rcpt": "tx, address", "on_data": "tx, headers", "on_message": "tx, msg", "route": "address, msg",
    "egress": "msg", "shaping": "site, source, msg",
    "on_delivered": "event", "on_deferred": "event", "on_bounced": "event",
}


class PluginLoadError(Exception):
    pass


def load(specs: Iterable[PluginSpec], route_hook: str = "") -> list[Entry]:
    """The configured plugins as chain entries, in order; the deprecated
    `delivery.route_hook` last, as a one-hook plugin. Raises ConfigError listing every problem."""
    entries, problems = [], []
    for i, spec in enumerate(specs):
        try:
            entries.append(load_one(spec))
        except PluginLoadError as e:
            problems.append(f"plugin[{i}] {spec.label} ({spec.module}): {e}")
    if route_hook:
        try:
            entries.append(route_hook_entry(route_hook))
        except PluginLoadError as e:
            problems.append(f"delivery.route_hook {route_hook!r}: {e}")
    if problems:
        raise ConfigError(problems)
    return entries


def load_one(spec: PluginSpec) -> Entry:
    return entry_for(_import(spec.module), spec.label, spec.options, spec.timeout, module=spec.module)


def entry_for(source: Any, name: str, options: dict | None = None, timeout: float = DEFAULT_TIMEOUT,
              module: str = "") -> Entry:
    """An entry from a module, a `Plugin` class, or an object with hook methods (mta.testing
    hands these directly). Raises PluginLoadError."""
    options = dict(options or {})
    plugin_cls = getattr(source, "Plugin", None) if isinstance(source, types.ModuleType) else None
    if isinstance(source, type):
        plugin_cls = source
    if plugin_cls is not None:
        if not isinstance(plugin_cls, type):
            raise PluginLoadError("Plugin is not a class")
        obj = _construct(plugin_cls, options)
        hooks = _hooks(obj, _own_methods(plugin_cls))
        setup, stop = getattr(obj, "start", None), getattr(obj, "stop", None)
    elif isinstance(source, types.ModuleType):
        obj = source
        # Hooks by name, wherever they were defined (a package may import them from its
        # modules); hook-like names are checked among the functions defined here.
        hooks = _hooks(source, [n for n, v in vars(source).items() if callable(v) and (
            n in HOOKS or (inspect.isfunction(v) and v.__module__ == source.__name__))])
        module_setup = getattr(source, "setup", None)
        if module_setup is not None:
            _check_signature("setup", module_setup, 1, "options")
        setup = (lambda: module_setup(options)) if module_setup is not None else None
        stop = getattr(source, "stop", None)
    else:  # an instance with hook methods
        obj = source
        hooks = _hooks(source, [n for n in dir(source) if not n.startswith("_")])
        setup, stop = getattr(obj, "start", None), getattr(obj, "stop", None)
    for fn, label in ((setup if plugin_cls is not None else None, "start"), (stop, "stop")):
        if fn is not None:
            _check_signature(label, fn, 0, "")
    if not hooks and setup is None:
        raise PluginLoadError(f"defines no hook (expected some of: {', '.join(HOOKS)})")
    return Entry(name, hooks, module=module or getattr(source, "__name__", name), timeout=timeout, obj=obj,
                 options=options, setup=setup, stop=stop)


def route_hook_entry(spec: str) -> Entry:
    """The deprecated `delivery.route_hook = "module:function"` as a one-hook plugin."""
    module, _, fname = spec.partition(":")
    fn = getattr(_import(module), fname or "route", None)
    if not callable(fn):
        raise PluginLoadError(f"{module} has no callable {fname or 'route'!r}")
    _check_signature("route", fn, 2, _ARGS["route"])
    log.warning('delivery.route_hook is deprecated: list the module under [[plugin]] with a hook named '
                '"route" (route_hook %r loaded as a one-hook plugin)', spec)
    return Entry("route_hook", {"route": fn}, module=module)


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise PluginLoadError(f"import failed: {type(e).__name__}: {e}") from e
        try:
            eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=module)
        except Exception:  # noqa: BLE001 - broken metadata: as not found
            eps = ()
        for ep in eps:
            try:
                return ep.load()
            except Exception as e2:  # noqa: BLE001
                raise PluginLoadError(f"entry point {ep.value!r} failed to load: {type(e2).__name__}: {e2}") from e2
        raise PluginLoadError(f'no module named {module!r} and no entry point of that name in the group '
                              f'"{ENTRY_POINT_GROUP}"') from e
    except Exception as e:  # noqa: BLE001 - the plugin's own import-time failure
        raise PluginLoadError(f"import failed: {type(e).__name__}: {e}") from e


def _construct(cls: type, options: dict) -> Any:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {"options": None}
    try:
        return cls(options) if params else cls()
    except Exception as e:  # noqa: BLE001 - an options error, said as the plugin says it
        raise PluginLoadError(f"Plugin(options) failed: {type(e).__name__}: {e}") from e


def _own_methods(cls: type) -> list[str]:
    names = []
    for klass in cls.__mro__:
        if klass is object:
            continue
        names.extend(n for n, v in vars(klass).items() if callable(v) or isinstance(v, (staticmethod, classmethod)))
    return names


def _hooks(obj: Any, names: Iterable[str]) -> dict[str, Any]:
    hooks: dict[str, Any] = {}
    for name in names:
        if name in HOOKS:
            fn = getattr(obj, name)
            _check_signature(name, fn, HOOKS[name], _ARGS[name])
            hooks[name] = fn
        elif name.startswith("on_"):
            close = difflib.get_close_matches(name, _KNOWN, 1, 0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PluginLoadError(f"unknown hook {name!r}{hint}; hooks are: {', '.join(HOOKS)}")
    return hooks


def _check_signature(name: str, fn: Any, arity: int, args: str) -> None:
    if not callable(fn):
        raise PluginLoadError(f"{name} is not callable")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable: trust it
    try:
        sig.bind(*([None] * arity))
    except TypeError:
        raise PluginLoadError(f"hook {name}{sig} has the wrong signature: it is called as {name}({args})") from None
