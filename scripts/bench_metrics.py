"""Time phbench's pooled pixel AUROC/AP against scikit-learn on an ATLAS-sized test set (655 × 128²).

Why: pooled pixel metrics over 10.7 M pixels run for every method, seed and table; scikit-learn needs
two full argsorts (one per metric). Prints times, the speed ratio and the largest difference.
Usage: python scripts/bench_metrics.py [--n 655] [--size 128] [--repeats 3] [--no-sklearn]
"""

from __future__ import annotations

import argparse
import time

import torch

from protocols.metrics import pooled_pixel_auroc_ap


def make_data(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lesion blobs with raised, noisy scores plus quantised background (ties, like real maps)."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, 1, size, size, generator=g) * 0.5
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy = torch.randint(size // 4, 3 * size // 4, (n,), generator=g)
    cx = torch.randint(size // 4, 3 * size // 4, (n,), generator=g)
    r = torch.randint(2, size // 8, (n,), generator=g)
    masks = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2 <= (r[:, None, None] ** 2))
    masks = masks[:, None]
    maps = maps + masks * torch.rand(n, 1, size, size, generator=g) * 0.6
    maps = torch.round(maps * 1000) / 1000  # three decimals: many ties
    return maps.float(), masks


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=655)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-sklearn", action="store_true")
    a = ap.parse_args()
    maps, masks = make_data(a.n, a.size)
    npx = maps.numel()
    print(f"pixels: {npx:,} ({a.n} x {a.size}^2), lesion fraction {masks.float().mean():.4f}, "
          f"torch threads {torch.get_num_threads()}")
    t_cpu, (auc, apv) = timed(lambda: pooled_pixel_auroc_ap(maps, masks), a.repeats)
    print(f"phbench CPU   : {t_cpu:7.3f} s  auroc={auc:.12f} ap={apv:.12f}")
    if torch.cuda.is_available():
        mc, kc = maps.cuda(), masks.cuda()
        pooled_pixel_auroc_ap(mc, kc)  # warm-up
        t_gpu, (auc_g, ap_g) = timed(lambda: pooled_pixel_auroc_ap(mc, kc), a.repeats)
        print(f"phbench CUDA  : {t_gpu:7.3f} s  auroc={auc_g:.12f} ap={ap_g:.12f} ({torch.cuda.get_device_name()})")
        assert abs(auc_g - auc) < 1e-12 and abs(ap_g - apv) < 1e-12, "CUDA and CPU disagree"
    if not a.no_sklearn:
        from sklearn.metrics import average_precision_score, roc_auc_score

        y, s = masks.numpy().ravel(), maps.numpy().ravel()
        t0 = time.perf_counter()
        auc_s = roc_auc_score(y, s)
        ap_s = average_precision_score(y, s)
        t_sk = time.perf_counter() - t0
        print(f"sklearn       : {t_sk:7.3f} s  auroc={auc_s:.12f} ap={ap_s:.12f}")
        d = max(abs(auc - auc_s), abs(apv - ap_s))
        print(f"max |diff| = {d:.3e}; speed-up vs sklearn: {t_sk / t_cpu:.1f}x (CPU)"
              + (f", {t_sk / t_gpu:.1f}x (CUDA)" if torch.cuda.is_available() else ""))
        assert d < 1e-9, "phbench and sklearn disagree"


if __name__ == "__main__":
    main()
