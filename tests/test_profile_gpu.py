"""The ``gpu`` profile: default's data and per-method budgets with epochs and step budgets × 4, its own run store,
and the CLI's ``--profile auto`` that picks it on a CUDA device (checked with CUDA faked: no GPU, no training)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.cli import build_parser, main, resolve_profile
from benchmark.estimate import Throughput, estimate
from benchmark.profiles import PROFILES, Profile, configure, get_profile
from benchmark.registry import get_method, get_table
from benchmark.runner import plan_run, planned_runs
from tests.test_estimate import fake

GPU, DEFAULT = get_profile("gpu"), get_profile("default")


def test_gpu_scales_epochs_and_step_budgets_of_the_default_configs():
    for name, budget in (("ae", "epochs"), ("proxyano", "max_steps")):
        cls = get_method(name)
        base, scaled = configure(cls, DEFAULT), configure(cls, GPU)
        assert getattr(base, budget) is not None and getattr(scaled, budget) == 4 * getattr(base, budget), name
        # everything else is default's config: the same networks, batch, lr, and no budget where default has none
        assert dataclasses.replace(scaled, epochs=base.epochs, max_steps=base.max_steps) == base, name
    assert configure(get_method("ae"), GPU).max_steps is None
    assert configure(get_method("ae"), GPU, epochs=5).epochs == 5  # the caller's overrides come after the scale


@pytest.mark.parametrize("name, schedule", [("dae", "cosine_t_max"), ("pix2pix", "decay_epochs"),
                                            ("cycle-gan", "decay_epochs"), ("f-anogan", "encoder_epochs")])
def test_schedules_tied_to_the_budget_scale_with_it(name, schedule):
    """A schedule counted in epochs or steps keeps its shape: DAE's cosine period, the linear-decay epochs of pix2pix
    and CycleGAN, f-AnoGAN's encoder stage."""
    cls = get_method(name)
    base, scaled = configure(cls, DEFAULT), configure(cls, GPU)
    assert schedule in cls.budget_fields
    assert getattr(base, schedule) and getattr(scaled, schedule) == 4 * getattr(base, schedule)
    assert scaled.epochs == 4 * base.epochs
    cls(scaled)  # still a valid config (pix2pix and CycleGAN check decay_epochs <= epochs)


def test_the_scale_leaves_early_stop_patience():
    """No default budget sets a patience (they train to the end), so a profile gives ProxyAno one to keep."""
    patient = Profile("patient", epochs=None, max_train_slices=None, max_test_slices=None, base="default",
                      budget_scale=4, method_overrides={"proxyano": {"early_stop_patience": 3}})
    cfg = configure(get_method("proxyano"), patient)
    assert cfg.early_stop_patience == 3 and cfg.max_steps == 4 * configure(get_method("proxyano"), DEFAULT).max_steps


def test_gpu_uses_the_default_data():
    assert GPU.data_name == "default" and DEFAULT.data_name == "default"
    assert GPU.phantom == DEFAULT.phantom


def test_table1_on_gpu_reuses_default_store_but_trains_other_models():
    spec = get_table("table1")

    def ae_plan(profile: Profile):
        (part, method, variant, seed, data, _), = planned_runs(spec, profile.name, methods=["ae"])
        return plan_run(spec, method, variant, seed, profile, data, part.overrides).spec

    on_gpu, on_default = ae_plan(GPU), ae_plan(DEFAULT)
    assert on_gpu.dataset_fingerprint == on_default.dataset_fingerprint
    assert on_gpu.train_key != on_default.train_key and on_gpu.key != on_default.key


def test_estimate_prices_the_gpu_budget(tmp_path):
    tp = Throughput.load(fake(tmp_path, ("ae",)))
    lines = [estimate(["table1"], tp, profile=p, methods=["ae"]).tables[0].lines["ae"] for p in ("default", "gpu")]
    assert lines[1].train_slices == 4 * lines[0].train_slices > 0
    assert main(["estimate", "table1", "--profile", "gpu", "--methods", "ae", "--throughput",
                 str(fake(tmp_path, ("ae",)))]) == 0


@pytest.fixture
def cuda(monkeypatch):
    """A machine where CUDA looks present (nothing runs on it here)."""
    monkeypatch.delenv("PHBENCH_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def resolved(argv: list[str]) -> str:
    args = build_parser().parse_args(argv)
    resolve_profile(args)
    return args.profile


@pytest.mark.parametrize("command", ["table", "render", "figure", "sweep"])
def test_auto_profile_is_gpu_on_cuda(cuda, capsys, command):
    assert resolved([command, "table1"]) == "gpu"
    err = capsys.readouterr().err
    assert "profile gpu" in err and "--profile default" in err


def test_auto_profile_is_default_on_cpu(monkeypatch, capsys):
    monkeypatch.delenv("PHBENCH_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolved(["table", "table1"]) == "default"
    assert capsys.readouterr().err == ""


def test_auto_follows_the_device_flag_and_explicit_profiles_stay(cuda, monkeypatch, capsys):
    assert resolved(["table", "table1", "--device", "cpu"]) == "default"
    monkeypatch.setenv("PHBENCH_DEVICE", "cpu")
    assert resolved(["render", "table1"]) == "default"
    assert resolved(["table", "table1", "--profile", "default", "--device", "cuda"]) == "default"
    assert resolved(["table", "table1", "--profile", "smoke"]) == "smoke"
    assert capsys.readouterr().err == ""
    assert resolved(["check"]) == "smoke" and resolved(["estimate", "table1"]) == "paper"


def test_cuda_named_on_a_machine_without_it_still_picks_gpu(monkeypatch):
    """A SLURM sweep's driver has no GPU; its jobs run on the --device it names."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolved(["sweep", "table1", "--device", "cuda"]) == "gpu"


def test_every_profile_is_accepted_where_a_profile_is():
    parser = build_parser()
    for argv in (["table", "table1"], ["check"], ["estimate", "table1"], ["render", "table1"], ["sweep", "table1"]):
        for name in PROFILES:
            assert parser.parse_args([*argv, "--profile", name]).profile == name
    with pytest.raises(SystemExit):
        parser.parse_args(["check", "--profile", "auto"])  # auto only where it is the default


def test_gpu_runs_live_in_their_own_run_store(cuda, tmp_path, capsys):
    assert main(["render", "table1", "--methods", "ae", "--store", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert f"no finished run in {tmp_path / 'gpu'}" in capsys.readouterr().err
