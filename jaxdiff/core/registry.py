"""Named building blocks a config chooses by name: score networks and samplers.

Each entry is registered once, where it is defined, with the config fields it
reads; the config field that names it (e.g. `model.name`) is looked up here,
and an unknown name is one error listing the registered ones. An entry that
was renamed keeps its former names as aliases, so configs that still say them
(e.g. a run's stored `config.json`) choose it too.

    from jaxdiff.models import NETWORKS

    @NETWORKS.register("my_unet", fields=("channels", "embed_dim"))
    def build_my_unet(model_config, image_shape, num_classes, dtype):
        return MyUNet(channels=tuple(model_config.channels), ...)
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from jaxdiff.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered building block.

    Attributes:
      name: what the config field says to choose it.
      build: the function that builds or runs it (its signature is the registry's).
      fields: the fields of the config group it reads.
      extras: anything else its registry asks of it (e.g. a sampler's NFE count).
      aliases: former names that choose it too.
    """

    name: str
    build: Callable
    fields: tuple[str, ...]
    extras: dict[str, Any]
    aliases: tuple[str, ...] = ()


class Registry:
    """Entries chosen by one config field, e.g. `Registry("model.name")`."""

    def __init__(self, config_field: str):
        self.config_field = config_field
        self._entries: dict[str, Entry] = {}
        # Each alias's entry name.
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        *,
        fields: tuple[str, ...] = (),
        aliases: tuple[str, ...] = (),
        **extras: Any,
    ) -> Callable:
        """A decorator that registers a function under `name`, also chosen by `aliases`.

        Raises:
          ValueError: `name` or an alias is taken (a programming error, not a user's).
        """

        def decorator(build: Callable) -> Callable:
            for taken in (name, *aliases):
                if taken in self:
                    raise ValueError(f"{self.config_field} {taken!r} is already registered")
            self._entries[name] = Entry(name, build, tuple(fields), extras, tuple(aliases))
            self._aliases.update(dict.fromkeys(aliases, name))
            return build

        return decorator

    def unregister(self, name: str) -> None:
        """Removes an entry and its aliases (for tests and notebooks that add temporary ones)."""
        for alias in self._entries.pop(name).aliases:
            del self._aliases[alias]

    def canonical(self, name: str) -> str:
        """The entry name that `name` chooses: the one it is an alias of, else `name` itself."""
        return self._aliases.get(name, name)

    def get(self, name: str) -> Entry:
        """The entry called `name`, or the one `name` is an alias of.

        Raises:
          UserError: no such entry; the message lists the entry names (not the aliases).
        """
        if name not in self:
            raise UserError(
                f"unknown {self.config_field} {name!r}; choose one of {', '.join(sorted(self))}"
            )
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        """The entry names, without aliases."""
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
