"""Training protocols that several methods share, as config base classes (one place for their numbers).

Why: RA App. A trains RA and every baseline of its tables (SI-VAE, AE-S, VAE, DAE) under one protocol; writing
its numbers into each config would let them drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.contract import MethodConfig


@dataclass
class RAAppendixAConfig(MethodConfig):
    """RA App. A: ≤ 1500 epochs, batch 8, early stopping after 500 epochs without validation improvement, and
    (App. B) the RandomAffine + flip augmentation of the ci-ber loaders on. The learning rate stays per method."""

    epochs: int = 1500
    batch_size: int = 8
    early_stop_patience: int | None = 500
    augment: bool = True
