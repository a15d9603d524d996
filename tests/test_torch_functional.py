"""dropblock_torch: the twin of test_jax_functional, in the torch layout (N, C, *spatial)."""

import functools
import itertools

import numpy as np
import pytest
import torch
from bit_equality import same_bits
from numpy_reference import dropped_mask, normalized

import dropblock_torch as dt
from dropblock_common import sampling as policy
from dropblock_torch import functional

# (shape in the torch layout, block_size): 1D/2D/3D, odd, even, rectangular and oversize blocks.
CASES = [
    ((2, 3, 17), 5),
    ((2, 2, 12), 4),
    ((2, 3, 14, 14), 7),
    ((2, 2, 10, 9), (4, 3)),
    ((2, 2, 6, 6), 9),
    ((1, 2, 8, 7, 6), (3, 2, 4)),
    ((3, 1, 5, 5), 1),
]


def random_x(shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) + 0.5).to(dtype)


def effective_block(shape, block_size):
    spatial = shape[2:]
    block = (block_size,) * len(spatial) if isinstance(block_size, int) else block_size
    return spatial, tuple(min(k, s) for k, s in zip(block, spatial))


def generator(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape, block_size", CASES)
@pytest.mark.parametrize("seed_region", ["valid", "full"])
def test_mask_is_the_dilation_of_the_seeds(shape, block_size, seed_region):
    seeds = dt.sample_seeds(shape, 0.3, block_size, seed_region=seed_region, generator=generator(3))
    out = dt.apply_seeds(random_x(shape), seeds, block_size, seed_region=seed_region, normalize="none")
    spatial, block = effective_block(shape, block_size)
    expected = dropped_mask(seeds.numpy(), spatial, block, range(2, len(shape)), seed_region)
    np.testing.assert_array_equal(out.numpy() == 0, expected)


@pytest.mark.parametrize("normalize", ["batch", "sample", "expected", "none"])
@pytest.mark.parametrize("shape, block_size", CASES[:4])
@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalisation_is_exact(shape, block_size, normalize, share_channels, dtype):
    x = random_x(shape, dtype)
    seeds = dt.sample_seeds(shape, 0.4, block_size, share_channels=share_channels, generator=generator(1))
    out = dt.apply_seeds(x, seeds, block_size, normalize=normalize, expected_drop=0.25)
    spatial, block = effective_block(shape, block_size)
    keep = ~dropped_mask(seeds.numpy(), spatial, block, range(2, len(shape)), "valid")
    rtol = 2e-7 if dtype == torch.float32 else 1e-15
    np.testing.assert_allclose(out.numpy(), normalized(x.numpy(), keep, normalize, 0.25), rtol=rtol)


@pytest.mark.parametrize("shape, block_size", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_shape_and_dtype_are_kept(shape, block_size, dtype):
    out = dt.drop_block(random_x(shape, dtype), 0.2, block_size, generator=generator(0))
    assert out.shape == shape and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_identity_when_not_training_or_at_zero():
    x = random_x((2, 3, 8, 8))
    assert dt.drop_block(x, 0.0, 3) is x
    assert dt.drop_block(x, 0.5, 3, training=False) is x
    torch.testing.assert_close(dt.drop_block(x, torch.tensor(0.0), 3), x, rtol=0, atol=0)


@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize("calibrate", [False, True])
@pytest.mark.parametrize("drop_prob", [1.0, torch.tensor(1.0)])
def test_drop_prob_one_gives_zeros(seed_region, calibrate, drop_prob):
    out = dt.drop_block(random_x((2, 2, 9, 9)), drop_prob, 3, seed_region=seed_region, calibrate=calibrate)
    assert (out == 0).all()


@pytest.mark.parametrize("normalize", ["batch", "sample", "expected", "none"])
def test_everything_dropped_gives_zeros_not_nan(normalize):
    seeds = torch.ones(2, 2, 4, 4, dtype=torch.bool)
    out = dt.apply_seeds(random_x((2, 2, 6, 6)), seeds, 3, normalize=normalize, expected_drop=0.5)
    assert (out == 0).all()


def test_float16_with_many_kept_units_does_not_overflow():
    shape = (2, 2, 256, 256)
    x = random_x(shape, torch.float16)
    seeds = dt.sample_seeds(shape, 0.1, 7, generator=generator(0))
    out16 = dt.apply_seeds(x, seeds, 7)
    out32 = dt.apply_seeds(x.float(), seeds, 7)
    assert out16.dtype == torch.float16 and torch.isfinite(out16).all()
    assert out16.float().abs().mean() > 0.5
    torch.testing.assert_close(out16, out32.half(), rtol=0, atol=0)


def test_channel_and_batch_sharing():
    x = random_x((4, 8, 16, 16))
    masks = {}
    for share_channels in (False, True):
        for share_batch in (False, True):
            out = dt.drop_block(
                x, 0.3, 3, share_channels=share_channels, share_batch=share_batch, generator=generator(2)
            )
            masks[share_channels, share_batch] = out == 0
    per_channel = masks[False, False]
    assert not (per_channel == per_channel[:, :1]).all() and not (per_channel == per_channel[:1]).all()
    assert (masks[True, False] == masks[True, False][:, :1]).all()
    assert not (masks[True, False] == masks[True, False][:1]).all()
    assert (masks[False, True] == masks[False, True][:1]).all()
    assert (masks[True, True] == masks[True, True][:1, :1]).all()


@pytest.mark.parametrize(
    "memory_format, shape", [(torch.channels_last, (2, 4, 9, 9)), (torch.channels_last_3d, (2, 4, 5, 5, 5))]
)
def test_channels_last_in_and_out(memory_format, shape):
    x = random_x(shape).contiguous(memory_format=memory_format)
    out = dt.drop_block(x, 0.3, 3, generator=generator(0))
    assert out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, dt.drop_block(x.contiguous(), 0.3, 3, generator=generator(0)), rtol=0, atol=0)


def test_inplace_writes_into_x_and_matches():
    for dtype in (torch.float32, torch.float16):
        x = random_x((2, 3, 10, 10), dtype)
        expected = dt.drop_block(x, 0.3, 3, generator=generator(5))
        out = dt.drop_block(x, 0.3, 3, inplace=True, generator=generator(5))
        assert out.data_ptr() == x.data_ptr()
        torch.testing.assert_close(x, expected, rtol=0, atol=0)


# --- Eagerly on the CPU the blocks are written from the seeds' coordinates; elsewhere (compiled,
# GPU, torch.func) the mask is unpacked and applied by where. Both give the same bits.

SHARING = [{}, {"share_channels": True}, {"share_batch": True}, {"share_channels": True, "share_batch": True}]


def with_specials(x: torch.Tensor) -> torch.Tensor:
    """``x`` with -0, inf, -inf and NaN in its first units (they meet dropped and kept units)."""
    flat = x.reshape(-1)
    flat[: 4 * 7 : 7] = torch.tensor([-0.0, float("inf"), -float("inf"), float("nan")])
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "mask_shape", [(2, 6, 5, 5), (2, 1, 5, 5), (1, 6, 5, 5)], ids=["per-unit", "shared-channels", "shared-batch"]
)
@pytest.mark.parametrize("inplace", [False, True])
def test_zeroing_on_the_cpu_gives_the_bits_of_where(dtype, mask_shape, inplace):
    # Eagerly on the CPU, with nothing to record for autograd, dropped units are cleared by a
    # product of x's bits with the kept flags (or an AND) rather than where or masked_fill_.
    x = with_specials(random_x((2, 6, 5, 5), dtype))
    dropped = torch.rand(mask_shape, generator=generator(3)) < 0.4
    compute = torch.promote_types(dtype, torch.float32)
    expected = torch.where(dropped, 0.0, x.to(compute))
    written = x.clone()
    out = functional._zeroed(written, dropped, compute, inplace)
    assert same_bits(out, expected)
    assert (out.data_ptr() == written.data_ptr()) == (inplace and dtype == compute)


def spy(function, calls: list):
    """``function``, recording that it was called in ``calls``."""

    def recorded(*args, **kwargs):
        calls.append(True)
        return function(*args, **kwargs)

    return recorded


def writing_blocks_whatever_their_number(monkeypatch) -> list:
    """Write blocks one by one for any number of seeds (the rule is about speed), recording each call."""
    writes = []
    monkeypatch.setattr(policy, "few_enough_blocks", lambda seeds, units: True)
    monkeypatch.setattr(functional, "_normalized_blocks", spy(functional._normalized_blocks, writes))
    return writes


def through_the_mask(call, monkeypatch):
    """``call()`` with the mask unpacked and applied, as compiled code and ``torch.func`` run it."""
    with monkeypatch.context() as patch:
        patch.setattr(functional, "_plain_eager_cpu", lambda x: False)
        return call()


@pytest.mark.parametrize("shape, block_size", CASES)
@pytest.mark.parametrize("seed_region", ["valid", "full"])
@pytest.mark.parametrize("sharing", SHARING, ids=lambda sharing: "-".join(sharing) or "per-unit")
def test_written_blocks_give_the_bits_of_the_unpacked_mask(shape, block_size, seed_region, sharing, monkeypatch):
    seeds = dt.sample_seeds(shape, 0.2, block_size, seed_region=seed_region, generator=generator(5), **sharing)
    base = with_specials(torch.randn(shape, generator=generator(6)) - 0.5)
    writes = writing_blocks_whatever_their_number(monkeypatch)
    formats = [torch.contiguous_format] + {4: [torch.channels_last], 5: [torch.channels_last_3d]}.get(len(shape), [])
    for dtype, normalize, memory_format, inplace in itertools.product(
        (torch.float32, torch.float16, torch.float64), ("batch", "sample", "expected", "none"), formats, (False, True)
    ):
        x = base.to(dtype).contiguous(memory_format=memory_format)
        options = dict(seed_region=seed_region, normalize=normalize, expected_drop=0.25, inplace=inplace)
        written_into = x.clone()
        written = dt.apply_seeds(written_into, seeds, block_size, **options)
        unpacked = through_the_mask(
            functools.partial(dt.apply_seeds, x.clone(), seeds, block_size, **options), monkeypatch
        )
        assert same_bits(written, unpacked), (dtype, normalize, memory_format, inplace)
        assert written.stride() == unpacked.stride() == x.stride()
        assert (written.data_ptr() == written_into.data_ptr()) == inplace
    assert bool(writes) == (seeds.shape[:2] == shape[:2])  # written from the seeds where per unit


GRADIENT_CASES = [CASES[2], CASES[3], CASES[5]]  # 2-D odd, 2-D rectangular, 3-D


@pytest.mark.parametrize(
    "shape, block_size, memory_format",
    [(shape, block, torch.contiguous_format) for shape, block in GRADIENT_CASES]
    + [(shape, block, torch.channels_last) for shape, block in GRADIENT_CASES if len(shape) == 4]
    + [(*CASES[5], torch.channels_last_3d)],
)
def test_written_blocks_give_the_gradient_of_the_unpacked_mask(shape, block_size, memory_format, monkeypatch):
    seeds = dt.sample_seeds(shape, 0.2, block_size, seed_region="full", generator=generator(7))
    x = random_x(shape).contiguous(memory_format=memory_format)
    weights = random_x(shape, seed=8)  # contiguous: the gradient still takes x's layout

    def gradient():
        leaf = x.clone().requires_grad_()
        out = dt.apply_seeds(leaf, seeds, block_size, seed_region="full")
        return out, torch.autograd.grad(out, leaf, weights)[0]

    writes = writing_blocks_whatever_their_number(monkeypatch)
    written, written_grad = gradient()
    assert writes  # the blocks were written from the seeds
    unpacked, unpacked_grad = through_the_mask(gradient, monkeypatch)
    assert same_bits(written.detach(), unpacked.detach()) and same_bits(written_grad, unpacked_grad)
    assert written_grad.stride() == unpacked_grad.stride() == x.stride()


@pytest.mark.parametrize(
    "shape, block_size",
    [((2, 16, 30, 30), 3), ((2, 24, 24, 24), (4, 3)), ((2, 3, 80, 80), 5), ((4, 16, 300), 7), ((2, 16, 12, 12, 12), 3)],
)
@pytest.mark.parametrize("seed_region", ["valid", "full"])
def test_drop_block_writes_the_blocks_of_its_sparse_seeds(shape, block_size, seed_region, monkeypatch):
    # Seed grids of 16384 positions or more draw their seeds one by one: the sparse draw gives
    # the seeds' positions, decoded from packed order where the channels are a multiple of 8.
    x = with_specials(torch.randn(shape, generator=generator(9)))

    def call():
        return dt.drop_block(x, 0.1, block_size, seed_region=seed_region, generator=generator(10))

    writes = writing_blocks_whatever_their_number(monkeypatch)
    written = call()
    assert writes and (written == 0).any()
    assert same_bits(written, through_the_mask(call, monkeypatch))


@pytest.mark.parametrize("seed_region", ["valid", "full"])
def test_written_blocks_give_the_second_derivative_of_the_unpacked_mask(seed_region, monkeypatch):
    # A gradient penalty differentiates the backward pass: it writes the blocks again.
    x, weights = random_x((2, 8, 12, 12)), random_x((2, 8, 12, 12), seed=12)
    seeds = dt.sample_seeds(x.shape, 0.2, 3, seed_region=seed_region, generator=generator(13))

    def penalty_gradient():
        leaf = x.clone().requires_grad_()
        out = dt.apply_seeds(leaf, seeds, 3, seed_region=seed_region)
        (grad,) = torch.autograd.grad((out * weights).sum(), leaf, create_graph=True)
        return torch.autograd.grad((grad * out).sum(), leaf)[0]

    writes = writing_blocks_whatever_their_number(monkeypatch)
    written = penalty_gradient()
    assert writes and same_bits(written, through_the_mask(penalty_gradient, monkeypatch))


def test_blocks_are_written_one_by_one_only_while_seeds_are_rare(monkeypatch):
    writes = []
    monkeypatch.setattr(functional, "_normalized_blocks", spy(functional._normalized_blocks, writes))
    x = random_x((8, 64, 28, 28))
    dt.drop_block(x, 0.1, 7, generator=generator(14))  # the paper's settings: 1 seed in ~500 units
    assert len(writes) == 1
    dt.drop_block(x, 0.3, 3, generator=generator(14))  # 1 seed in ~30 units: through the mask
    every_seed = torch.ones(2, 3, 8, 8, dtype=torch.bool)
    assert torch.equal(dt.apply_seeds(random_x((2, 3, 10, 10)), every_seed, 3), torch.zeros(2, 3, 10, 10))
    assert len(writes) == 1


def test_empty_inputs_go_through_the_mask(monkeypatch):
    writes = writing_blocks_whatever_their_number(monkeypatch)
    for shape in [(0, 3, 8, 8), (2, 0, 8, 8), (0, 4, 40)]:
        empty = torch.zeros(shape)
        seeds = dt.sample_seeds(shape, 0.3, 3, generator=generator(15))
        assert dt.apply_seeds(empty, seeds, 3).shape == shape
        assert dt.drop_block(empty, 0.3, 3).shape == shape
    assert not writes


def test_make_fx_and_fake_tensors_trace_the_mask_path(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    writing_blocks_whatever_their_number(monkeypatch)  # eagerly, these seeds would be written

    x = random_x((2, 3, 10, 10))
    seeds = dt.sample_seeds(x.shape, 0.1, 3, seed_region="full", generator=generator(15))
    other = dt.sample_seeds(x.shape, 0.1, 3, seed_region="full", generator=generator(16))

    def call(x, seeds):
        return dt.apply_seeds(x, seeds, 3, seed_region="full")

    for tracing_mode in ("real", "symbolic"):
        traced = make_fx(call, tracing_mode=tracing_mode)(x, seeds)
        assert same_bits(traced(x, other), call(x, other))
    with FakeTensorMode() as mode:
        assert call(mode.from_tensor(x), mode.from_tensor(seeds)).shape == x.shape


def test_vmap_over_apply_seeds_still_gives_each_example_its_own_mask(monkeypatch):
    writing_blocks_whatever_their_number(monkeypatch)  # eagerly, these seeds would be written
    x = random_x((3, 4, 12, 12))
    seeds = dt.sample_seeds(x.shape, 0.3, 3, generator=generator(11))
    vmapped = torch.func.vmap(lambda one, its: dt.apply_seeds(one, its, 3, spatial_dims=2))(x, seeds)
    for index in range(3):
        assert same_bits(vmapped[index], dt.apply_seeds(x[index], seeds[index], 3, spatial_dims=2))


def test_noise_replaces_dropped_units_without_rescale():
    x = random_x((2, 4, 16, 16))
    out = dt.drop_block(x, 0.3, 5, noise=True, generator=generator(0))
    kept = out == x
    assert 0.5 < kept.float().mean() < 0.95
    noise = out[~kept]
    assert abs(noise.mean()) < 0.1 and 0.85 < noise.std() < 1.15


@pytest.mark.parametrize("normalize", ["batch", "sample", "expected", "none"])
def test_gradient_is_keep_times_scale(normalize):
    x = random_x((2, 3, 10, 10)).requires_grad_()
    weights = random_x((2, 3, 10, 10), seed=1)
    out = dt.drop_block(x, 0.3, 3, normalize=normalize, generator=generator(4))
    (out * weights).sum().backward()
    torch.testing.assert_close(x.grad, (out / x).detach() * weights, rtol=2e-6, atol=0)


@pytest.mark.parametrize("share_channels", [False, True])
def test_torch_func_grad_gives_autograds_gradient(share_channels):
    # Without autograd recording (no input that needs a gradient) the custom functions' forward
    # is called directly; under torch.func.grad the recorded path must still run.
    x = random_x((2, 8, 10, 10), torch.float64)

    def loss(x):
        out = dt.drop_block(x, 0.3, 3, share_channels=share_channels, generator=generator(2))
        return (out * out).sum()

    recorded = x.clone().requires_grad_()
    loss(recorded).backward()
    transformed = torch.func.grad(loss)(x)
    assert torch.equal(transformed, recorded.grad)
    assert bool((transformed == 0).any()) and bool((transformed != 0).any())


# torch's own forward-AD helpers (make_dual, unpack_dual) import a module that uses torch.jit.script.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("drop_prob, block_size", [(0.1, 3), (0.5, 3)], ids=["blocks-written", "whole-mask"])
@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_forward_mode_tangents_are_the_mask_times_the_scale(drop_prob, block_size, share_channels, inplace):
    # Bits multiplied as integers carry no tangent, and the custom autograd functions had no jvp
    # (forward-mode AD raised): a dual x must get the linear map's tangent.
    import torch.autograd.forward_ad as fwAD

    x = random_x((2, 8, 10, 10))
    options = dict(share_channels=share_channels, inplace=inplace)
    expected = dt.drop_block(x.clone(), drop_prob, block_size, **options, generator=generator(2)) / x
    with fwAD.dual_level():
        dual = fwAD.make_dual(x.clone(), torch.ones_like(x))
        out = dt.drop_block(dual, drop_prob, block_size, **options, generator=generator(2))
        tangent = fwAD.unpack_dual(out).tangent
    torch.testing.assert_close(tangent, expected, rtol=1e-6, atol=0)
    direction = random_x((2, 8, 10, 10), seed=3) - 1.0
    run = lambda t: dt.drop_block(t.clone(), drop_prob, block_size, **options, generator=generator(2))  # noqa: E731
    _, pushed = torch.func.jvp(run, (x,), (direction,))
    torch.testing.assert_close(pushed, expected * direction, rtol=1e-6, atol=0)
    # Per example under vmap too (forward_ad.unpack_dual, asked first before, has no batching rule).
    one = lambda t, v: torch.func.jvp(lambda y: dt.drop_block(y, drop_prob, block_size, spatial_dims=2), (t,), (v,))  # noqa: E731
    outs, tangents = torch.func.vmap(one, randomness="different")(x, direction)
    torch.testing.assert_close(tangents, torch.where(outs == 0, 0.0, outs / x * direction), rtol=1e-6, atol=0)
    assert (outs == 0).any()


@pytest.mark.parametrize("share_channels", [False, True])
def test_a_default_device_elsewhere_changes_nothing(share_channels):
    # Tensors made inside (the read-back scale among them) follow x, not torch's default device.
    x = random_x((2, 8, 10, 10))
    expected = dt.drop_block(x, 0.5, 3, share_channels=share_channels, generator=generator(1))
    with torch.device("meta"):
        out = dt.drop_block(x, 0.5, 3, share_channels=share_channels, generator=generator(1))
    assert same_bits(out, expected)


def test_vmap_over_seeds_with_an_unbatched_half_precision_x():
    x = random_x((2, 8, 10, 10), torch.float16)
    seeds = torch.rand((3, 2, 8, 8, 8), generator=generator(1)) < 0.3
    vmapped = torch.func.vmap(lambda s: dt.apply_seeds(x, s, 3))(seeds)
    one_by_one = torch.stack([dt.apply_seeds(x, s, 3) for s in seeds])
    assert same_bits(vmapped, one_by_one)


@pytest.mark.parametrize("compute", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape, lost",
    [((2, 8, 10, 10), 0), ((2, 8, 10, 10), 37), ((2, 8, 10, 10), 1600), ((1, 1, 4099, 4099), 1_234_567)],
    ids=["none-lost", "some-lost", "all-lost", "total-above-2**24"],
)
def test_the_batch_scale_read_back_on_the_cpu_has_the_bits_of_the_tensor_formula(compute, shape, lost, monkeypatch):
    # Eagerly on the CPU the dropped count is read back and the scale divided in numpy; traced
    # or on another device it stays a tensor formula. Both must give the same bits, also where
    # the total is no float32 (4099**2 > 2**24) and where everything is dropped (a scale of 0).
    words = torch.zeros(shape, dtype=torch.bool)
    words.view(-1)[:lost] = True
    read_back = functional._scale(words, functional.bitmask.UNPACKED, "batch", None, compute)
    monkeypatch.setattr(functional, "_plain_eager_cpu", lambda tensor: False)
    formula = functional._scale(words, functional.bitmask.UNPACKED, "batch", None, compute)
    assert same_bits(read_back, formula), (read_back, formula)


def test_a_tensor_rate_gets_no_gradient():
    rate = torch.tensor(0.2, requires_grad=True)
    x = random_x((2, 3, 10, 10)).requires_grad_()
    dt.drop_block(x, rate, 3, normalize="expected", calibrate=True).sum().backward()
    assert rate.grad is None


@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("normalize", ["batch", "expected"])
def test_a_rate_off_the_cpu_is_never_read_back(share_channels, normalize):
    # A meta tensor has no data: reading it back (float(), .item(), a data-dependent branch)
    # raises, as a GPU read would synchronise. The grid is large enough for sparse sampling.
    x = torch.ones(4, 64, 40, 40, device="meta")
    rate = torch.tensor(0.1, device="meta")
    out = dt.drop_block(x, rate, 5, calibrate=True, share_channels=share_channels, normalize=normalize)
    assert out.device.type == "meta" and out.shape == x.shape
    assert dt.sample_seeds(x.shape, rate, 5, device="meta").shape == (4, 64, 36, 36)


def test_tensor_and_float_rates_agree():
    x = random_x((4, 4, 14, 14))
    for calibrate in (False, True):
        a = dt.drop_block(x, 0.15, 5, calibrate=calibrate, normalize="expected", generator=generator(7))
        b = dt.drop_block(x, torch.tensor(0.15), 5, calibrate=calibrate, normalize="expected", generator=generator(7))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


def test_generators_make_masks_repeatable():
    x = random_x((2, 2, 16, 16))
    a, b = (dt.drop_block(x, 0.2, 3, generator=generator(i)) for i in (0, 1))
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, dt.drop_block(x, 0.2, 3, generator=generator(0)), rtol=0, atol=0)


X = torch.ones(2, 3, 8, 8)


def apply_expected(expected_drop):
    return dt.apply_seeds(X, torch.ones(2, 3, 6, 6), 3, normalize="expected", expected_drop=expected_drop)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: dt.drop_block(torch.ones(2, 3), 0.1, 3), ValueError, r"x\.ndim=2"),
        (lambda: dt.drop_block(X, 0.1, 0), ValueError, r"block_size=0"),
        (lambda: dt.drop_block(X, 0.1, -2), ValueError, r"block_size=-2"),
        (lambda: dt.drop_block(X, 0.1, 2.0), TypeError, r"block_size=2\.0"),
        (lambda: dt.drop_block(X, 0.1, (3, 3, 3)), ValueError, r"block_size=\(3, 3, 3\)"),
        (lambda: dt.drop_block(X, -0.1, 3), ValueError, r"drop_prob=-0\.1"),
        (lambda: dt.drop_block(X, 1.1, 3), ValueError, r"drop_prob=1\.1"),
        (lambda: dt.drop_block(X, float("nan"), 3), ValueError, r"drop_prob=nan"),
        (lambda: dt.drop_block(X, torch.tensor([0.1, 0.2]), 3), ValueError, r"0-dim tensor"),
        (lambda: dt.drop_block(X.long(), 0.1, 3), TypeError, r"x\.dtype=torch\.int64"),
        (lambda: dt.drop_block(X.numpy(), 0.1, 3), TypeError, r"torch\.Tensor"),
        (lambda: dt.drop_block(X, 0.1, 3, seed_region="same"), ValueError, r"seed_region='same'"),
        (lambda: dt.drop_block(X, 0.1, 3, normalize="mean"), ValueError, r"normalize='mean'"),
        (
            lambda: dt.apply_seeds(X, torch.ones(2, 3, 8, 8, dtype=torch.bool), 3),
            ValueError,
            r"seeds\.shape=\(2, 3, 8, 8\)",
        ),
        (lambda: dt.apply_seeds(X, torch.ones(2, 3, 6, 6), 3, normalize="expected"), ValueError, r"expected_drop"),
        (lambda: dt.sample_seeds((2, 8), 0.1, 3), ValueError, r"shape\.ndim=2"),
        (lambda: dt.sample_seeds(X, 0.1, 3), TypeError, r"shape must be a sequence of ints.*\(2, 3, 8, 8\)"),
        (lambda: dt.drop_block(X, 0.1, 3, generator=5), TypeError, r"generator=5"),
        (lambda: apply_expected(torch.tensor(1.0)), ValueError, r"expected_drop=1\.0"),
        (lambda: apply_expected(torch.tensor(-0.5)), ValueError, r"expected_drop=-0\.5"),
        (lambda: dt.sample_seeds(X.shape, 0.1, 3, generator="0"), TypeError, r"generator='0'"),
    ],
)
def test_bad_arguments_raise_with_the_argument_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
