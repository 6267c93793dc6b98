"""The plugin registry: entry points of the group ``embedkit.plugins``, imported lazily.

Every implementation of an embedkit interface (``EmbeddingBackend``, ``Router``,
``VocabExtension`` and the model parts such as ``FeedForward``) is declared in a package's
``pyproject.toml`` as ``"<Interface>.<ShortName>" = "module:Class"``. Nothing is imported until
an implementation is used by name or listed: the interfaces' metaclass, ``PluginInterface``,
loads the entry points of its own interface only when something (jsonargparse resolving a
short ``class_path``, ``embedkit plugins``) asks for its subclasses.
"""

from __future__ import annotations

import difflib
import importlib
from abc import ABCMeta
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

ENTRY_POINT_GROUP = "embedkit.plugins"

_INTERFACES: dict[str, PluginInterface] = {}


class PluginInterface(ABCMeta):
    """Metaclass of the embedkit interfaces: their subclasses include registered plugins.

    ``__subclasses__`` is what jsonargparse walks to resolve a short ``class_path`` (and to list
    choices in ``--help``), so loading the interface's entry points here makes short names of
    plugins work without importing any plugin at start-up.
    """

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any):
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        if namespace.get("__plugin_interface__", False):
            _INTERFACES[name] = cls
        return cls

    def __subclasses__(cls) -> list[type]:
        interface = _interface_of(cls)
        if interface is not None:
            load_all(interface)
        return type.__subclasses__(cls)


def _interface_of(cls: type) -> str | None:
    return cls.__name__ if _INTERFACES.get(cls.__name__) is cls else None


@dataclass(frozen=True)
class PluginSpec:
    """One registered implementation, as declared by its entry point."""

    interface: str
    short_name: str
    class_path: str
    package: str
    entry_point: EntryPoint

    def load(self) -> type:
        """Import the implementation and check that it implements its declared interface."""
        return _load(self)


def known_interfaces() -> dict[str, type]:
    """The interfaces defined so far, by name (importing ``embedkit.interfaces`` defines all)."""
    importlib.import_module("embedkit.interfaces")
    return dict(_INTERFACES)


@cache
def _specs() -> tuple[PluginSpec, ...]:
    specs = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        interface, sep, short_name = ep.name.partition(".")
        if not sep or not short_name:
            raise ValueError(
                f"entry point {ep.name!r} = {ep.value!r} in group {ENTRY_POINT_GROUP!r} is not "
                "named '<Interface>.<ShortName>' (e.g. 'EmbeddingBackend.GPUBackend')"
            )
        module, _, attr = ep.value.partition(":")
        package = ep.dist.name if ep.dist is not None else module.split(".")[0]
        specs.append(PluginSpec(interface, short_name, f"{module}.{attr}", package, ep))
    return tuple(sorted(specs, key=lambda s: (s.interface, s.short_name)))


def refresh() -> None:
    """Forget cached entry points (after installing a plugin package into a running process)."""
    _specs.cache_clear()


def specs(interface: str | None = None) -> list[PluginSpec]:
    """Registered implementations, optionally only those of one interface; nothing is imported."""
    return [s for s in _specs() if interface is None or s.interface == interface]


def _load(spec: PluginSpec) -> type:
    try:
        cls = spec.entry_point.load()
    except Exception as err:  # the plugin's own import failure, reported with its origin
        raise ImportError(
            f"plugin {spec.interface}.{spec.short_name} = {spec.class_path} "
            f"(package {spec.package}) failed to import: {err}"
        ) from err
    base = known_interfaces().get(spec.interface)
    if base is None:
        raise ValueError(
            f"plugin {spec.short_name} ({spec.class_path}) declares interface "
            f"{spec.interface!r}; known interfaces: {', '.join(sorted(_INTERFACES))}"
        )
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(
            f"plugin {spec.class_path} is registered as a {spec.interface} but is not one"
        )
    return cls


def load_all(interface: str) -> list[type]:
    """Import every registered implementation of ``interface``."""
    return [_load(s) for s in specs(interface)]


def resolve(interface: str, name: str) -> type:
    """The class that ``name`` (a short name or a full class path) denotes for ``interface``.

    Raises ``ValueError`` naming the known implementations and the closest matches when the
    name is unknown.
    """
    for spec in specs(interface):
        if name in (spec.short_name, spec.class_path):
            return _load(spec)
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            cls = None
        base = known_interfaces().get(interface)
        if isinstance(cls, type) and base is not None and issubclass(cls, base):
            return cls
    raise ValueError(unknown_name_message(interface, name))


def unknown_name_message(interface: str, name: str) -> str:
    """The error text for an unknown implementation name: known ones and the closest matches."""
    known = [s.short_name for s in specs(interface)]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    message = f"unknown {interface} {name!r}; known: {', '.join(known) or '(none installed)'}"
    if close:
        message += f"; did you mean {' or '.join(close)}?"
    return message


def suggest(name: str) -> list[tuple[str, list[str], list[str]]]:
    """For an unknown name of unknown interface: (interface, known names, close matches) each."""
    out = []
    for interface in sorted({s.interface for s in specs()}):
        known = [s.short_name for s in specs(interface)]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        out.append((interface, known, close))
    return out
