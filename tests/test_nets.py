"""Tests of scidiff.nets: shapes, exact periodic equivariance, initialisation,
conditioning, size handling, error messages, sizing helpers, autograd modes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import scidiff as sd
from scidiff.nets import NoisyEncoder, UNet, count_parameters, estimate_flops, summary
from scidiff.nets.blocks import SelfAttention

TINY = dict(base_channels=8, groups=4, num_heads=2)
SIZES = {1: (16,), 2: (8, 12), 3: (8, 4, 8)}  # multiples of 4 = 2**(3 levels - 1)


def perturb(module: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Move every parameter off its initial value (the zero output conv included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def tiny_unet(channels: int = 1, dims: int = 2, *, dtype: torch.dtype = torch.float64, seed: int = 0, **kwargs) -> UNet:
    torch.manual_seed(seed)
    options = {**TINY, **kwargs}
    return perturb(UNet(channels, dims, **options), seed).to(dtype)


def roll(x: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    return torch.roll(x, shifts=shifts, dims=tuple(range(2, 2 + len(shifts))))


# ---------------------------------------------------------------- shapes, dtypes


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_and_dtype(dims: int, channels: int) -> None:
    net = tiny_unet(channels, dims, dtype=torch.float32)
    x = torch.randn(2, channels, *SIZES[dims])
    out = net(x, torch.rand(2))
    assert out.shape == x.shape and out.dtype == torch.float32
    out64 = net.double()(x.double(), torch.rand(2, dtype=torch.float64))
    assert out64.dtype == torch.float64


def test_public_name_and_scalar_time_broadcast() -> None:
    assert sd.UNet is UNet
    net = tiny_unet(2, 1)
    x = torch.randn(3, 2, 16, dtype=torch.float64)
    reference = net(x, torch.full((3,), 0.25, dtype=torch.float64))
    assert torch.equal(net(x, 0.25), reference)
    assert torch.equal(net(x, torch.tensor(0.25)), reference)
    # t in another dtype is computed in x's dtype
    assert torch.allclose(net(x, torch.full((3,), 0.25)), reference, atol=1e-12, rtol=0)


def test_config_rebuilds_the_same_network() -> None:
    net = tiny_unet(2, 2, cond_dim=3, extra_channels=1, time_embedding="fourier")
    twin = UNet(**net.config).double()
    twin.load_state_dict(net.state_dict())
    f64 = dict(dtype=torch.float64)
    x, t, c, e = torch.randn(2, 2, 8, 8, **f64), torch.rand(2, **f64), torch.randn(2, 3, **f64), torch.randn(2, 1, 8, 8, **f64)
    assert torch.equal(twin(x, t, c, e), net(x, t, c, e))


def test_unet_and_encoder_share_one_architecture_description() -> None:
    options = dict(periodic=True, base_channels=8, channel_mults=(1, 2), num_res_blocks=2, attention_levels=(),
                   num_heads=2, dropout=0.1, time_embedding="fourier", groups=4, fused_attention=False)
    net = UNet(1, 2, **options)
    enc = NoisyEncoder(1, 2, 3, **options)
    assert net.arch == enc.arch  # the same validated description, defaults included
    shared = {k: v for k, v in net.config.items() if k != "channels"}
    assert {k: v for k, v in enc.config.items() if k not in ("channels", "out_features")} == shared
    assert NoisyEncoder(**enc.config).arch == enc.arch
    for cls, args in ((UNet, (1, 2)), (NoisyEncoder, (1, 2, 3))):
        with pytest.raises(ValueError, match=rf"{cls.__name__} got unknown option\(s\) \['base_chanels'\]"):
            cls(*args, base_chanels=8)


# ---------------------------------------------------------------- periodicity


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_periodic_unet_is_exactly_shift_equivariant(dims: int) -> None:
    net = tiny_unet(2, dims, periodic=True, cond_dim=2, extra_channels=1, attention_levels=(1, 2))
    x = torch.randn(2, 2, *SIZES[dims], dtype=torch.float64)
    extra = torch.randn(2, 1, *SIZES[dims], dtype=torch.float64)
    t, c = torch.tensor([0.3, 0.8], dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    shifts = tuple(4 * (k + 1) for k in range(dims))  # whole coarsest cells, different per axis
    out = net(x, t, c, extra)
    assert out.abs().max() > 1e-2  # a non-trivial output
    shifted = net(roll(x, shifts), t, c, roll(extra, shifts))
    assert torch.allclose(shifted, roll(out, shifts), atol=1e-10, rtol=0)


@pytest.mark.parametrize("dims", [1, 2])
def test_zero_padded_unet_is_not_shift_equivariant(dims: int) -> None:
    periodic = tiny_unet(1, dims, periodic=True)
    zero = UNet(1, dims, periodic=False, **TINY).double()
    zero.load_state_dict(periodic.state_dict())  # same weights, only the padding differs
    x = torch.randn(2, 1, *SIZES[dims], dtype=torch.float64)
    t = torch.rand(2, dtype=torch.float64)
    shifts = (4,) * dims
    assert torch.allclose(periodic(roll(x, shifts), t), roll(periodic(x, t), shifts), atol=1e-10, rtol=0)
    gap = (zero(roll(x, shifts), t) - roll(zero(x, t), shifts)).abs()
    assert gap.max() > 1e-3


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_periodic_encoder_is_exactly_shift_invariant(dims: int) -> None:
    torch.manual_seed(1)
    enc = perturb(NoisyEncoder(2, dims, 5, periodic=True, cond_dim=1, **TINY)).double()
    x = torch.randn(3, 2, *SIZES[dims], dtype=torch.float64)
    t, c = torch.rand(3, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    f = enc(x, t, c)
    assert f.shape == (3, 5)
    shifts = tuple(4 * (k + 1) for k in range(dims))
    assert torch.allclose(enc(roll(x, shifts), t, c), f, atol=1e-10, rtol=0)
    assert (enc(x.flip(-1), t, c) - f).abs().max() > 1e-4  # not invariant to everything


def test_encoder_any_size_without_periodicity() -> None:
    enc = NoisyEncoder(1, 2, 4, **TINY).double()
    assert enc(torch.randn(2, 1, 9, 13, dtype=torch.float64), 0.5).shape == (2, 4)
    with pytest.raises(ValueError, match="spatial size 9 is not a multiple of 4"):
        NoisyEncoder(1, 2, 4, periodic=True, **TINY)(torch.randn(2, 1, 9, 12), 0.5)


# ---------------------------------------------------------------- initialisation and conditioning


def test_zero_output_at_init_then_nonzero_after_one_step() -> None:
    torch.manual_seed(0)
    net = UNet(1, 2, **TINY)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    assert torch.equal(net(x, t), torch.zeros_like(x))
    optimiser = torch.optim.SGD(net.parameters(), lr=1e-2)
    loss = F.mse_loss(net(x, t), torch.randn_like(x))
    loss.backward()
    optimiser.step()
    assert net(x, t).abs().min() > 0  # every output pixel moved


def test_output_depends_on_time() -> None:
    for kind in ("log", "sinusoidal", "fourier"):
        net = tiny_unet(1, 2, time_embedding=kind)
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        gap = (net(x, 0.2) - net(x, 0.7)).abs().max()
        assert gap > 1e-4, kind


def test_log_time_features_turn_at_most_one_radian_per_unit_of_ln_t() -> None:
    """|d e_k / dt| <= omega_k / t <= 1 / t for the log features; the sinusoidal ones turn at up to
    1000 radians per unit t wherever t is: the reason the trained flow is rough in t."""
    from scidiff.nets.embedding import LogTimeEmbedding, SinusoidalEmbedding

    t = torch.logspace(-5, 0, 2001, dtype=torch.float64)
    h = 1e-7 * t
    for emb, bound in ((LogTimeEmbedding(32), 1.0 / t), (SinusoidalEmbedding(32), torch.full_like(t, 1000.0))):
        rate = ((emb(t + h) - emb(t - h)) / (2 * h[:, None])).abs().max(1).values
        assert bool((rate <= bound * (1 + 1e-5)).all())
        assert float((rate / bound).max()) > 0.5  # the bound is reached: it is the fastest feature
    mid = (t > 0.1) & (t < 1.0)
    log_rate = ((LogTimeEmbedding(32)(t + h) - LogTimeEmbedding(32)(t - h)) / (2 * h[:, None])).abs().max(1).values
    assert float(log_rate[mid].max()) < 10.5  # against ~1000 for the sinusoidal features
    with pytest.raises(ValueError, match="even number"):
        LogTimeEmbedding(3)


def test_conditioning_changes_output() -> None:
    net = tiny_unet(1, 2, cond_dim=3)
    x, t = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    c1, c2 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    assert (net(x, t, c1) - net(x, t, c2)).abs().max() > 1e-4
    # a single vector is shared by the batch
    single = torch.randn(3, dtype=torch.float64)
    assert torch.equal(net(x, t, single), net(x, t, single.expand(2, 3)))


def test_extra_fields_change_output() -> None:
    net = tiny_unet(1, 1, extra_channels=2)
    x, t = torch.randn(2, 1, 16, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    e1, e2 = torch.randn(2, 2, 16, dtype=torch.float64), torch.randn(2, 2, 16, dtype=torch.float64)
    assert (net(x, t, extra=e1) - net(x, t, extra=e2)).abs().max() > 1e-4


# ---------------------------------------------------------------- sizes and errors


def test_non_divisible_size_is_zero_padded_and_cropped() -> None:
    net = tiny_unet(1, 2)
    x, t = torch.randn(2, 1, 10, 7, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    out = net(x, t)
    assert out.shape == x.shape
    padded = net(F.pad(x, (0, 1, 0, 2)), t)  # 12 x 8, the next multiples of 4
    assert torch.equal(out, padded[..., :10, :7])


def test_periodic_rejects_non_divisible_size() -> None:
    net = UNet(1, 2, periodic=True, **TINY)
    with pytest.raises(ValueError, match=r"spatial size 30 is not a multiple of 4 \(the UNet downsamples 2 times\): use 28 or 32, or periodic=False"):
        net(torch.randn(1, 1, 32, 30), 0.5)


def test_error_messages_name_the_shapes() -> None:
    net = UNet(3, 2, cond_dim=2, **TINY)
    x, t, c = torch.randn(4, 3, 8, 8), torch.rand(4), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"UNet expects 2-D fields with 3 channels, shaped \[B, 3, H, W\]; got shape \[4, 1, 8, 8\]"):
        net(torch.randn(4, 1, 8, 8), t, c)
    with pytest.raises(ValueError, match=r"shaped \[B, 3, H, W\]; got shape \[4, 3, 8\]"):
        net(torch.randn(4, 3, 8), t, c)
    with pytest.raises(ValueError, match=r"needs cond of shape \[B, 2\]; got None"):
        net(x, t)
    with pytest.raises(ValueError, match=r"cond of shape \[4, 2\].*got shape \[4, 5\]"):
        net(x, t, torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"t of shape \[4\].*got shape \[3\]"):
        net(x, torch.rand(3), c)
    with pytest.raises(ValueError, match=r"takes no extra"):
        net(x, t, c, torch.randn(4, 1, 8, 8))
    with pytest.raises(ValueError, match=r"extra of shape \[4, 1, 8, 8\].*got shape \[4, 1, 8, 6\]"):
        UNet(3, 2, extra_channels=1, **TINY)(x, t, extra=torch.randn(4, 1, 8, 6))
    with pytest.raises(ValueError, match="cond_dim=0"):
        UNet(3, 2, **TINY)(x, t, c)
    with pytest.raises(TypeError, match="float32 but x is torch.float64"):
        UNet(3, 2, **TINY)(x.double(), t)


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="dims must be 1, 2 or 3"):
        UNet(1, 4)
    with pytest.raises(ValueError, match="groups=3"):
        UNet(1, 2, base_channels=8, groups=3)
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(1, 2, attention_levels=(3,))
    with pytest.raises(ValueError, match="time_embedding"):
        UNet(1, 2, time_embedding="learned")
    with pytest.raises(ValueError, match="num_heads=3"):
        UNet(1, 2, base_channels=8, groups=4, num_heads=3)


# ---------------------------------------------------------------- sizing helpers


def test_count_parameters() -> None:
    net = tiny_unet(2, 2, cond_dim=3)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())
    conv = nn.Conv2d(3, 8, 3)
    assert count_parameters(conv) == 8 * 3 * 3 * 3 + 8
    shared = nn.Sequential(conv, conv)  # shared weights count once
    assert count_parameters(shared) == 224
    conv.bias.requires_grad_(False)
    assert count_parameters(conv, trainable_only=True) == 216


def test_estimate_flops_matches_analytic_counts() -> None:
    # convolution: output positions x C_out x C_in x kernel volume
    assert estimate_flops(nn.Conv2d(3, 8, 3, padding=1), (2, 3, 16, 12)) == 2 * 16 * 12 * 8 * 3 * 9
    assert estimate_flops(nn.Conv1d(4, 6, 5, stride=2, padding=2), (1, 4, 20)) == 10 * 6 * 4 * 5
    assert estimate_flops(nn.Conv3d(2, 4, 3, padding=1), (1, 2, 4, 4, 4), unit="flops") == 2 * 64 * 4 * 2 * 27
    # attention: qkv projection + Q K^T + (softmax) V + output projection
    B, C, L = 2, 16, 4 * 6
    analytic = B * (L * C * 3 * C + L * L * C + L * L * C + L * C * C)
    for fused in (False, True):
        assert estimate_flops(SelfAttention(C, num_heads=2, groups=4, fused=fused), (B, C, 4, 6)) == analytic


def test_estimate_flops_scales_with_batch_and_summary_reports_totals() -> None:
    net = UNet(1, 2, cond_dim=2, **TINY)
    one = estimate_flops(net, (1, 1, 16, 16))
    assert one > 0 and estimate_flops(net, (3, 1, 16, 16)) == 3 * one  # every product is per sample
    text = summary(net, (1, 1, 16, 16))
    assert f"total parameters: {count_parameters(net):,}" in text
    assert f"MACs per forward: {one:,}" in text and "[1, 1, 16, 16]" in text


# ---------------------------------------------------------------- autograd modes


def test_batched_vjp_equals_one_vjp_at_a_time() -> None:
    net = tiny_unet(1, 2, attention_levels=(0, 1, 2))
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(2, dtype=torch.float64)
    out = net(x, t)
    V = torch.randn(5, *out.shape, dtype=torch.float64)
    (batched,) = torch.autograd.grad(out, x, grad_outputs=V, is_grads_batched=True, retain_graph=True)
    looped = torch.stack([torch.autograd.grad(out, x, grad_outputs=v, retain_graph=True)[0] for v in V])
    assert torch.allclose(batched, looped, atol=1e-12, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # raised inside torch's forward AD
def test_forward_mode_agrees_with_reverse_mode() -> None:
    net = tiny_unet(1, 1, cond_dim=1)
    x, t, c = torch.randn(2, 1, 8, dtype=torch.float64), torch.rand(2, dtype=torch.float64), torch.randn(2, 1, dtype=torch.float64)
    u, w = torch.randn_like(x), torch.randn_like(x)

    def f(x: torch.Tensor) -> torch.Tensor:
        return net(x, t, c)

    _, Ju = torch.func.jvp(f, (x,), (u,))
    _, vjp = torch.func.vjp(f, x)
    (JTw,) = vjp(w)
    assert math.isclose((w * Ju).sum().item(), (JTw * u).sum().item(), rel_tol=1e-10)


def test_channels_last_gives_the_same_output() -> None:
    net = tiny_unet(3, 2, dtype=torch.float32)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    reference = net(x, t)
    out = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), t)
    assert torch.allclose(out, reference, atol=1e-5, rtol=1e-5)


def test_fused_attention_computes_the_same_function() -> None:
    net = tiny_unet(1, 2, attention_levels=(1, 2))
    fused = UNet(**{**net.config, "fused_attention": True}).double()
    fused.load_state_dict(net.state_dict())
    x, t = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    assert torch.allclose(fused(x, t), net(x, t), atol=1e-12, rtol=0)


def test_per_sample_jacobian_trace_by_vmap_matches_batched_vjps() -> None:
    net = tiny_unet(1, 1)
    x, t = torch.randn(3, 1, 8, dtype=torch.float64), torch.rand(3, dtype=torch.float64)

    def f(x_i: torch.Tensor, t_i: torch.Tensor) -> torch.Tensor:
        return net(x_i[None], t_i[None])[0]

    J = torch.func.vmap(torch.func.jacrev(f))(x, t).reshape(3, 8, 8)
    trace_vmap = J.diagonal(dim1=1, dim2=2).sum(-1)
    x_ = x.clone().requires_grad_(True)
    basis = torch.eye(8, dtype=torch.float64).reshape(8, 1, 1, 8).expand(8, 3, 1, 8)
    (rows,) = torch.autograd.grad(net(x_, t), x_, grad_outputs=basis, is_grads_batched=True)  # [8, 3, 1, 8]
    trace_vjp = torch.einsum("kbk->b", rows.reshape(8, 3, 8))
    assert torch.allclose(trace_vmap, trace_vjp, atol=1e-12, rtol=0)
