"""IterMask2's high-pass filter against an independent numpy version and its defining properties."""

import numpy as np
import pytest
import torch

from methods.blocks.frequency import highpass, low_frequency_disc


def numpy_highpass(x: np.ndarray, radius: float = 15.0) -> np.ndarray:
    """Spec §2 written out with numpy (float64): |F| := 1 on the strict disc, every phase kept."""
    h, w = x.shape[-2:]
    spec = np.fft.fftshift(np.fft.fft2(x.astype(np.float64)), axes=(-2, -1))
    rows, cols = np.ogrid[:h, :w]
    inside = np.sqrt((rows - h // 2) ** 2 + (cols - w // 2) ** 2) < radius
    amp = np.where(inside, 1.0, np.abs(spec))
    out = amp * np.exp(1j * np.angle(spec))
    return np.real(np.fft.ifft2(np.fft.ifftshift(out, axes=(-2, -1))))


def test_disc_has_697_bins_at_128():
    disc = low_frequency_disc(128, 128, 15)
    assert int(disc.sum()) == 697
    assert bool(disc[64, 64]) and not bool(disc[64, 64 + 15]) and bool(disc[64, 64 + 14])


def test_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1, 128, 128)).astype(np.float32) * 2 - 3  # BraTS-like offset: a big DC term
    ours = highpass(torch.from_numpy(x)).numpy()
    ref = numpy_highpass(x)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("value", [0.0, 0.7, -3.0])
def test_constant_image_maps_to_the_disc_kernel(value):
    """A constant has only a DC bin; the disc becomes all ones (sign of c at DC), so x_hf is the disc's IDFT."""
    x = torch.full((1, 1, 128, 128), value)
    out = highpass(x)[0, 0].double()
    disc = low_frequency_disc(128, 128, 15).double()
    spec = disc.clone()
    if value < 0:
        spec[64, 64] = -1.0  # angle(−|c|·HW) = π
    expected = torch.fft.ifft2(torch.fft.ifftshift(spec.to(torch.complex128))).real
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    dc = 1.0 if value >= 0 else -1.0
    assert out.sum().item() == pytest.approx(dc, abs=1e-4)  # Σ x_hf = the new DC bin
    assert out[0, 0].item() == pytest.approx((697 - 2 * (value < 0)) / 128**2, abs=1e-6)


def test_phases_kept_and_amplitudes_set():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 128, 128, dtype=torch.float64)
    spec = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    out = torch.fft.fftshift(torch.fft.fft2(highpass(x).double()), dim=(-2, -1))
    disc = low_frequency_disc(128, 128, 15)
    # amplitude: 1 inside the disc, unchanged outside
    assert torch.allclose(out.abs()[..., disc], torch.ones(()).double(), atol=1e-3)
    assert torch.allclose(out.abs()[..., ~disc], spec.abs()[..., ~disc], atol=1e-3, rtol=1e-4)
    # phase: identical everywhere (compare unit phasors to avoid the ±π wrap)
    unit = lambda z: z / z.abs()  # noqa: E731
    assert torch.allclose(unit(out), unit(spec), atol=2e-3)


def test_fp32_under_autocast_and_any_leading_shape():
    x = torch.randn(4, 2, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = highpass(x.bfloat16(), radius=10)
    assert out.dtype == torch.float32 and out.shape == x.shape
    ref = numpy_highpass(x.bfloat16().float().numpy(), radius=10)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA absent")
def test_cuda_matches_cpu():
    x = torch.randn(2, 1, 128, 128)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gpu = highpass(x.cuda())
    assert gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), highpass(x), atol=1e-4, rtol=0)
