"""Named backends: which implementation answers for a name in the configuration.

A :class:`Registry` maps names (``segmenter.backend: lisa``, ``map.backend: torch``,
``fusion.method: token_attention``) to implementations. Entries are either registered objects or
lazy ``"package.module:attribute"`` references, imported on first use: a backend's heavy
dependencies (torch, transformers, Open3D, a sparse-convolution library) load only when it is
chosen, and a contract module never has to import the implementations of itself.
:mod:`reasoning_seg.backends` lists the shipped ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class Registry:
    """Names -> implementations of one kind of backend (``kind`` names it in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: register the decorated class or function under ``name``."""

        def add(obj: Any) -> Any:
            self._add(name, obj)
            return obj

        return add

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attribute"``, imported when ``name`` is first asked for."""
        if ":" not in target:
            raise ValueError(f"lazy {self.kind} '{name}': target must be 'module:attribute', got {target!r}")
        self._add(name, target)

    def _add(self, name: str, entry: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        """The implementation of ``name``; ValueError naming the choices, or why it cannot load."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} '{name}' (one of {', '.join(self._entries)})")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            try:
                entry = getattr(importlib.import_module(module), attribute)
            except ImportError as exc:
                raise ValueError(f"{self.kind} '{name}' cannot be loaded here: {exc}") from exc
            self._entries[name] = entry
        return entry
