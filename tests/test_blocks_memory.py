"""MemAE memory (shrinkage, renormalisation, entropy) and ProxyAno's EMA nearest-item memory (eqs. 2, 4–6)."""

import math

import pytest
import torch

from methods.blocks.memory import EMAMemory, MemoryModule, entropy_loss, hard_shrink_relu

# ------------------------------------------------------------------------------------------------- MemAE


def test_hard_shrink_zeroes_small_weights():
    w = torch.tensor([0.001, 0.0025, 0.003, 0.5])
    out = hard_shrink_relu(w, 0.0025)
    assert out[:2].tolist() == [0.0, 0.0]
    assert out[2:].tolist() == pytest.approx([0.003, 0.5], rel=1e-6)


def test_memae_hand_computed_addressing():
    mem = MemoryModule(2, 2, shrink_threshold=0.3)
    with torch.no_grad():
        mem.items.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # cosine sims (1, 0) → softmax (e/(e+1), 1/(e+1)) = (0.731, 0.269); 0.269 < 0.3 is shrunk, renormalised to (1, 0)
    out, w = mem(torch.tensor([[5.0, 0.0]]))
    assert w.tolist() == [[1.0, 0.0]] and out.tolist() == [[1.0, 0.0]]
    mem.shrink_threshold = 0.0
    _, w = mem(torch.tensor([[5.0, 0.0]]))
    assert w[0, 0].item() == pytest.approx(math.e / (math.e + 1), rel=1e-6)
    dot = MemoryModule(2, 2, shrink_threshold=0.0, similarity="dot")
    with torch.no_grad():
        dot.items.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    _, w = dot(torch.tensor([[2.0, 0.0]]))  # dot sims (2, 0): the query norm matters
    assert w[0, 0].item() == pytest.approx(math.exp(2) / (math.exp(2) + 1), rel=1e-6)


def test_memae_rows_sum_to_one_with_zeros_and_maps():
    torch.manual_seed(0)
    n = 16
    mem = MemoryModule(n, 8, shrink_threshold=1.0 / n)
    z = torch.randn(3, 8, 5, 4)
    out, w = mem(z)
    assert out.shape == z.shape and w.shape == (3, n, 5, 4)
    assert torch.allclose(w.sum(1), torch.ones(3, 5, 4), atol=1e-6) and (w >= 0).all()
    assert (w == 0).float().mean() > 0.2  # shrinkage made the addressing sparse
    # per-position addressing: the map result at one position equals the vector result for that feature
    out_v, w_v = mem(z[:, :, 2, 1])
    assert torch.allclose(out[:, :, 2, 1], out_v, atol=1e-6) and torch.allclose(w[:, :, 2, 1], w_v, atol=1e-7)
    assert torch.allclose(out_v, w_v @ mem.items, atol=1e-6)
    (out.square().sum() + entropy_loss(w)).backward()
    assert mem.items.grad is not None and mem.items.grad.abs().sum() > 0


def test_entropy_loss_values():
    onehot = torch.zeros(4, 10)
    onehot[torch.arange(4), torch.tensor([0, 3, 3, 9])] = 1.0
    assert entropy_loss(onehot).item() == 0.0
    assert entropy_loss(torch.full((2, 10, 3, 3), 0.1)).item() == pytest.approx(math.log(10), rel=1e-5)


def test_memae_bf16_autocast():
    mem = MemoryModule(32, 16)
    z = torch.randn(2, 16, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, w = mem(z)
    assert out.dtype == torch.bfloat16 and w.dtype == torch.float32
    assert torch.allclose(w.sum(1), torch.ones(2, 4, 4), atol=1e-6)


# ------------------------------------------------------------------------------------------------- ProxyAno EMA


def _memory(eps: float = 1e-5, **kw) -> EMAMemory:
    mem = EMAMemory(num_items=4, dim=2, eps=eps, **kw)
    mem.items.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    return mem


def _expected_step(mem: EMAMemory, z: torch.Tensor, idx: torch.Tensor):
    """The documented rule, written out: returns (N, e, m) after one batch."""
    g, k = mem.decay, mem.num_items
    counts = torch.stack([(idx == i).sum() for i in range(k)]).float()
    sums = torch.stack([z[idx == i].sum(0) for i in range(k)])
    n_new = g * mem.cluster_size + (1 - g) * counts
    e_new = g * mem.embed_sum + (1 - g) * sums
    total = n_new.sum()
    smoothed = (n_new + mem.eps) / (total + k * mem.eps) * total
    m_new = mem.items.clone()
    m_new[counts > 0] = e_new[counts > 0] / smoothed[counts > 0, None]
    return n_new, e_new, m_new


def test_ema_moves_exactly_the_nearest_items():
    mem = _memory().train()
    z = torch.tensor([[1.0, 0.5], [0.5, -1.0], [9.0, 1.0], [11.0, 0.0], [10.5, 1.0]])
    for step in range(2):  # step 0 from the (N = 0, e = 0) init, step 1 from a non-trivial state
        before = mem.items.clone()
        n_exp, e_exp, m_exp = _expected_step(mem, z + step, torch.tensor([0, 0, 1, 1, 1]))
        read = mem(z + step)
        assert read.indices.tolist() == [0, 0, 1, 1, 1]
        assert torch.equal(read.quantized, before[[0, 0, 1, 1, 1]])  # the pre-update items are read
        assert torch.allclose(mem.cluster_size, n_exp) and torch.allclose(mem.embed_sum, e_exp)
        assert torch.allclose(mem.items, m_exp, rtol=1e-6)
        assert torch.equal(mem.items[2:], before[2:])  # unassigned items are bit-identical
    # first update from the zero init lands on the mean of the assigned vectors (exactly without Laplace smoothing,
    # within ~Kε/ΣN = 8e-4 relative with ε = 1e-5 while ΣN is still 0.01·5)
    for eps, rtol in ((0.0, 1e-6), (1e-5, 1e-3)):
        fresh = _memory(eps=eps).train()
        fresh(z)
        assert torch.allclose(fresh.items[0], z[:2].mean(0), rtol=rtol, atol=rtol)
        assert torch.allclose(fresh.items[1], z[2:].mean(0), rtol=rtol)


def test_ema_frozen_in_eval_mode_and_deterministic():
    mem = _memory().eval()
    state = {k: v.clone() for k, v in mem.state_dict().items()}
    mem(torch.randn(6, 2) * 10)
    assert all(torch.equal(state[k], v) for k, v in mem.state_dict().items())
    a, b = EMAMemory(8, 3, generator=torch.Generator().manual_seed(3)), EMAMemory(8, 3, generator=torch.Generator()
                                                                                     .manual_seed(3))
    z = torch.randn(2, 3, 6, 6)
    for _ in range(3):
        a(z), b(z)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    tie = _memory()
    assert tie(torch.tensor([[5.0, 0.0]])).indices.item() == 0  # equidistant from items 0 and 1: lowest index


def test_straight_through_and_commitment():
    mem = _memory(commitment=0.25).eval()
    z = torch.tensor([[1.0, 2.0], [9.0, 0.0]], requires_grad=True)
    read = mem(z)
    expected = 0.25 * ((z.detach() - torch.tensor([[0.0, 0.0], [10.0, 0.0]])) ** 2).mean()
    assert read.commitment_loss.item() == pytest.approx(expected.item())
    c = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    (read.quantized * c).sum().backward()
    assert torch.equal(z.grad, c)  # gradient of z̃ copied to z
    assert _memory(commitment=0.0)(z).commitment_loss.item() == 0.0


def test_state_dict_round_trip_and_maps():
    torch.manual_seed(0)
    mem = EMAMemory().train()  # ProxyAno defaults: 128 items of dim 64
    assert not list(mem.parameters()) and set(mem.state_dict()) == {"items", "cluster_size", "embed_sum"}
    z = torch.randn(2, 64, 8, 8)
    read = mem(z)
    assert read.quantized.shape == z.shape and read.indices.shape == (2, 8, 8)
    mem(z * 0.5)
    other = EMAMemory()
    other.load_state_dict(mem.state_dict())
    assert all(torch.equal(other.state_dict()[k], v) for k, v in mem.state_dict().items())
    assert torch.equal(other.eval()(z).quantized, mem.eval()(z).quantized)
    with pytest.raises(ValueError, match="channels"):
        mem(torch.randn(2, 32, 4, 4))


def test_ema_bf16_autocast_and_reinit():
    mem = EMAMemory(16, 8).train()
    z = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        read = mem(z.bfloat16())
    assert read.quantized.dtype == torch.bfloat16 and mem.items.dtype == torch.float32
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[1, 5]] = True
    mem.reinit_items(dead, z, generator=torch.Generator().manual_seed(0))
    rows = z.permute(0, 2, 3, 1).reshape(-1, 8)
    for i in (1, 5):
        assert (mem.items[i] == rows).all(1).any() and mem.cluster_size[i] == 0 and mem.embed_sum[i].abs().sum() == 0
