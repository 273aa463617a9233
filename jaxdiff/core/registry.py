"""Named building blocks a config chooses by name: score networks and samplers.

Each entry is registered once, where it is defined, with the config fields it
reads; the config field that names it (e.g. `model.name`) is looked up here,
and an unknown name is one error listing the registered ones.

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
    """

    name: str
    build: Callable
    fields: tuple[str, ...]
    extras: dict[str, Any]


class Registry:
    """Entries chosen by one config field, e.g. `Registry("model.name")`."""

    def __init__(self, config_field: str):
        self.config_field = config_field
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, fields: tuple[str, ...] = (), **extras: Any) -> Callable:
        """A decorator that registers a function under `name`.

        Raises:
          ValueError: `name` is taken (a programming error, not a user's).
        """

        def decorator(build: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.config_field} {name!r} is already registered")
            self._entries[name] = Entry(name, build, tuple(fields), extras)
            return build

        return decorator

    def unregister(self, name: str) -> None:
        """Removes an entry (for tests and notebooks that register temporary ones)."""
        del self._entries[name]

    def get(self, name: str) -> Entry:
        """The entry called `name`.

        Raises:
          UserError: no such entry; the message lists the registered names.
        """
        if name not in self._entries:
            raise UserError(
                f"unknown {self.config_field} {name!r}; choose one of {', '.join(sorted(self))}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
