"""Run profiles: how big the data and the training budget are.

- ``smoke``: seconds per method, CPU; used by CI and the tests.
- ``default``: the embedded data; a few minutes per method on 2 CPU cores.
- ``paper``: the paper's settings (config defaults untouched); needs a GPU and the real data.
- ``gpu``: ``default``'s data, stores and networks with a 4x longer budget (``Method.budget_fields``); ``phbench
  table`` picks it when the device is CUDA. Why: the default budgets are the first epoch within 20 % of a longer
  run's lowest validation loss, a rule loose enough to keep table1 under 20 minutes on 2 CPU cores, and a GPU has
  time to train further down those curves. The factor 4 is an assumption: neither its run time nor its curves have
  been measured on a GPU yet.
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
    base: str | None = None  # the profile whose data, stores, phantom size and methods' profile_overrides this uses
    budget_scale: int = 1  # multiplies each method config's budget fields (Method.budget_fields; those not None)

    @property
    def data_name(self) -> str:
        """The profile name that selects data, stores, phantom size and per-method budgets (``base`` or own name);
        the own name keys only the run store and the results (``runs/<name>``, ``results/<name>``)."""
        return self.base or self.name

    @property
    def phantom(self) -> dict[str, int]:
        """The phantom size of this profile; the one table is ``datasets.phantom.PHANTOM_SIZES``."""
        from datasets.phantom import phantom_sizes

        return phantom_sizes(self.data_name)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", epochs=1, max_train_slices=32, max_test_slices=48),
    "default": Profile("default", epochs=None, max_train_slices=None, max_test_slices=None),
    "paper": Profile("paper", epochs=None, max_train_slices=None, max_test_slices=None, seeds=(0, 1, 2)),
    "gpu": Profile("gpu", epochs=None, max_train_slices=None, max_test_slices=None, base="default", budget_scale=4),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


def configure(method_cls: type, profile: Profile, **extra: Any):
    """The method's paper config with the profile's overrides (its base profile's per-method budgets), then the
    profile's budget scale on the method's ``budget_fields`` (not early-stop patience), then the caller's overrides."""
    cfg = method_cls.Config()
    overrides: dict[str, Any] = {}
    if profile.epochs is not None:
        overrides["epochs"] = profile.epochs
    overrides.update(profile.method_overrides.get(method_cls.name, {}))
    overrides.update(getattr(method_cls, "profile_overrides", {}).get(profile.data_name, {}))
    if profile.budget_scale != 1:
        budgets = {f: overrides.get(f, getattr(cfg, f)) for f in method_cls.budget_fields}
        overrides.update({f: n * profile.budget_scale for f, n in budgets.items() if n is not None})
    overrides.update(extra)
    return cfg.replace(**overrides) if overrides else cfg
