"""Named registries: how every pluggable piece (strategy, model, objective, acquirer, hook,
dataset) is chosen from a config by a string.

Each kind of piece has one `Registry` instance, kept in the module that defines the kind's
contract (`acquisition.strategies.STRATEGIES`, `models.MODELS`, `objectives.OBJECTIVES`,
`acquisition.acquirers.ACQUIRERS`, `hooks.HOOKS`, `data.catalog.DATASETS`). A method that
lives outside the package registers its pieces at import time; the config's `plugins` tuple
names such modules and `import_plugins` imports them before the config is validated, so a
plug-in is chosen by name exactly like a built-in piece.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from ripu_jax.errors import PluginError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
  """name -> object, with a decorator to add and a lookup whose error lists the known names."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
    """`@registry.register("name")` on a definition, or `registry.register("name", obj)`."""
    if not isinstance(name, str) or not name:
      raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")

    def add(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"a {self.kind} named {name!r} is already registered")
      self._entries[name] = obj
      return obj

    return add if entry is None else add(entry)

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except (KeyError, TypeError):
      known = ", ".join(self.names()) or "none"
      raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}. A {self.kind} defined "
                       "outside ripu_jax is found once its module is listed in "
                       "--config.plugins") from None

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  @contextlib.contextmanager
  def temporary(self, name: str, entry: T) -> Iterator[T]:
    """Registers `entry` for the duration of a `with` block (tests)."""
    self.register(name, entry)
    try:
      yield entry
    finally:
      del self._entries[name]


def import_plugins(modules: Sequence[str]) -> None:
  """Imports each named module (e.g. "my_method" or "examples.my_method") for its
  registrations; an unimportable one raises with what to check."""
  for module in modules:
    try:
      importlib.import_module(module)
    except ImportError as error:
      raise PluginError(
          f"plugin module {module!r} (from config.plugins) could not be imported: {error}. "
          "It must be importable from the current directory or the Python path (e.g. "
          "PYTHONPATH=/path/to/dir_with_module)") from error
