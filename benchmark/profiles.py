"""Run profiles: how big the data and the training budget are.

- ``smoke``: seconds per method, CPU; used by CI and the tests.
- ``default``: the embedded data; a few minutes per method on 2 CPU cores.
- ``paper``: the paper's settings (config defaults untouched); needs a GPU and the real data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    # overrides applied to every method config (only fields the config has); None = keep paper value
    epochs: int | None
    max_train_slices: int | None  # subsample training slices (evenly spread) for speed
    max_test_slices: int | None
    seeds: tuple[int, ...] = (0,)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method config overrides

    @property
    def phantom(self) -> dict[str, int]:
        """The phantom size of this profile; the one table is ``datasets.phantom.PHANTOM_SIZES``."""
        from datasets.phantom import phantom_sizes

        return phantom_sizes(self.name)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", epochs=1, max_train_slices=32, max_test_slices=48),
    "default": Profile("default", epochs=None, max_train_slices=None, max_test_slices=None),
    "paper": Profile("paper", epochs=None, max_train_slices=None, max_test_slices=None, seeds=(0, 1, 2)),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


def configure(method_cls: type, profile: Profile, **extra: Any):
    """The method's paper config with the profile's (and the caller's) overrides applied."""
    cfg = method_cls.Config()
    overrides: dict[str, Any] = {}
    if profile.epochs is not None:
        overrides["epochs"] = profile.epochs
    overrides.update(profile.method_overrides.get(method_cls.name, {}))
    overrides.update(getattr(method_cls, "profile_overrides", {}).get(profile.name, {}))
    overrides.update(extra)
    return cfg.replace(**overrides) if overrides else cfg
