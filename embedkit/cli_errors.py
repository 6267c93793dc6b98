"""Turns jsonargparse's errors about an unknown ``class_path`` into registry suggestions."""

from __future__ import annotations

import importlib
import re
import typing

from embedkit import registry

_UNKNOWN_NAME_PATTERNS = (
    re.compile(r"Expected a dot import path string: (\S+)"),
    re.compile(r"Got value: Namespace\(class_path='([^']+)'"),
    re.compile(r"[Ii]mport path (\S+) does not"),
)
_CONTEXT = re.compile(r"Parser key \"([^\"]+)\"|given class_path '([^']+)'")


def unknown_names(message: str) -> list[str]:
    """Implementation names in a jsonargparse error that could not be imported."""
    names = []
    for pattern in _UNKNOWN_NAME_PATTERNS:
        for name in pattern.findall(message):
            if name not in names and not _importable(name):
                names.append(name)
    return names


def _importable(class_path: str) -> bool:
    module, _, attr = class_path.rpartition(".")
    if not module:
        return False
    try:
        return hasattr(importlib.import_module(module), attr)
    except ImportError:
        return False


def _interfaces_in(annotation: object, interfaces: dict[str, type]) -> list[str]:
    found = [name for name, cls in interfaces.items() if annotation is cls]
    for arg in typing.get_args(annotation):
        args = arg if isinstance(arg, list) else [arg]
        for item in args:
            found += [n for n in _interfaces_in(item, interfaces) if n not in found]
    return found


def interfaces_expected(message: str) -> list[str]:
    """Interfaces the failing parameter expects, from the error's key / class_path chain."""
    interfaces = registry.known_interfaces()
    named = [name for name in interfaces if re.search(rf"\.{name}\b", message)]
    if named:
        return named
    owner, key = None, None
    for match in _CONTEXT.finditer(message):
        parser_key, class_path = match.groups()
        if class_path:
            owner = class_path
        else:
            key = parser_key
    if owner is None or key is None:
        return []
    try:
        module, _, attr = owner.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an owner we cannot inspect gives no hint, never a second error
        return []
    return _interfaces_in(hints.get(key.split(".")[-1]), interfaces)


def explain(message: str) -> str:
    """``message`` with, for each unknown name, the known implementations and close matches."""
    lines = []
    for name in unknown_names(message):
        expected = interfaces_expected(message)
        if expected:
            lines += [registry.unknown_name_message(interface, name) for interface in expected]
            continue
        lines.append(f"unknown plugin {name!r}")
        for interface, known, close in registry.suggest(name):
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            lines.append(f"  known {interface}: {', '.join(known)}{hint}")
    if not lines:
        return message
    return message.rstrip() + "\n\n" + "\n".join(lines) + "\n(`embedkit plugins` lists them all)"
