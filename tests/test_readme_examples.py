"""The README's "Adding a method" examples, run: each ```python block is executed as a fresh module with a
temporary method registry, then trained (one step per stage) through the run store, scored and reloaded, so
the README can never show code that does not work.
"""

from __future__ import annotations

import functools
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import benchmark.models
from benchmark.contract import DataSpec, Method, ScoreOutput, Trainable
from benchmark.models import ModelStore, model_spec, obtain
from benchmark.profiles import configure, get_profile
from benchmark.registry import _REGISTRIES, all_methods
from benchmark.trainer import Trainer

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Adding a method"
FAMILIES = ("my_ae", "my_staged", "my_refine", "my_bank", "my_ddpm")  # one-stage, staged, dependent, bank, diffusion


def examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.find(f"\n{SECTION}\n")
    assert start >= 0, f"README.md has no '{SECTION}' section"
    end = text.find("\n## ", start + len(SECTION) + 2)
    return re.findall(r"^```python\n(.*?)^```", text[start:end if end >= 0 else None], re.S | re.M)


BLOCKS = examples()


def load_example(source: str, index: int, monkeypatch) -> type[Method]:
    """Exec ``source`` as module ``readme_example_<index>`` into a copy of the method registry (restored by
    monkeypatch); return the one class it registers."""
    before = dict(all_methods())  # the real methods are imported and registered first
    monkeypatch.setitem(_REGISTRIES, "method", dict(_REGISTRIES["method"]))
    module = types.ModuleType(f"readme_example_{index}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, f"README.md[{SECTION} #{index}]", "exec"), module.__dict__)
    new = {k: v for k, v in _REGISTRIES["method"].items() if k not in before}
    assert len(new) == 1, f"example {index} must register exactly one method, registered {sorted(new)}"
    (cls,) = new.values()
    assert cls.__module__ == module.__name__
    header = re.match(r"# methods/(\w+)\.py\n", source)
    assert header and header.group(1) == cls.name.replace("-", "_"), "first line: # methods/<name>.py"
    return cls


def test_one_example_per_family():
    names = [re.match(r"# methods/(\w+)\.py", b).group(1) for b in BLOCKS]
    assert names == list(FAMILIES)
    assert all(len(b.splitlines()) <= 45 for b in BLOCKS), [len(b.splitlines()) for b in BLOCKS]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"example{i}" for i in range(len(BLOCKS))])
def test_readme_example_trains_scores_and_reloads(index, toy_store, tmp_path, monkeypatch):
    cls = load_example(BLOCKS[index], index, monkeypatch)
    # one optimiser step per epoch, so every stage of the smoke config is 1-2 steps
    monkeypatch.setattr(benchmark.models, "Trainer", functools.partial(Trainer, max_steps_per_epoch=1))
    train, val, test = toy_store.split("train").take(4), toy_store.split("val").take(2), toy_store.split("test")
    smoke = get_profile("smoke")
    store = ModelStore(tmp_path)
    batch = test.batch([0, 1, 2])

    for variant in ("", *cls.variants):
        spec = model_spec(cls.name, variant, lambda c: configure(c, smoke, batch_size=2), train, val, 0)
        got = obtain(spec, train, val, store, torch.device("cpu"), progress=False)
        method = got.method
        assert isinstance(method, cls) and method.data == DataSpec.of(toy_store)
        if variant:  # README's variants change scoring only: the default's weights are reused
            assert got.trained == []
        else:
            assert got.trained and got.trained[-1] == cls.name
            if isinstance(method, Trainable):
                assert 1 <= got.training["fit"]["steps"] <= 2 * len(method.stages())
            else:
                assert method.fitted, "a training-free method fills self.fitted in learn"
        out = method.score(batch)
        assert isinstance(out, ScoreOutput)
        assert out.anomaly_map.shape == (3, 1, 128, 128) and out.image_score.shape == (3,)
        assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.image_score).all()
        assert out.reconstruction is None or out.reconstruction.shape == batch.image.shape
        alone = method.score(test.batch([2]))  # a slice's map does not depend on its batch (contract suite)
        torch.testing.assert_close(alone.anomaly_map[0], out.anomaly_map[2], rtol=1e-4, atol=1e-5)

        # a later process loads the same model from the store: nothing trains, the maps are the same
        again = obtain(spec, train, val, store, torch.device("cpu"), progress=False, _memo={})
        assert again.trained == []
        torch.testing.assert_close(again.method.score(batch).anomaly_map, out.anomaly_map, rtol=1e-5, atol=1e-6)


def test_examples_leave_the_registry_untouched():
    assert not set(FAMILIES) & set(all_methods())
