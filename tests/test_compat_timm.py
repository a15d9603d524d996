"""dropblock_torch.compat.timm against timm 1.0.x's DropBlock, bit for bit, and its fixes.

timm (``timm.layers.drop``) imports only beside the newest torch, where torchvision does; with
``pip install --no-deps timm`` beside the CPU build of torch its ``layers/drop.py`` is loaded on
its own, as the benchmark does. Tests that need no peer run everywhere.
"""

import copy
import importlib.util
import itertools
import pathlib

import numpy as np
import pytest
import torch
from bit_equality import same_bits

from dropblock_common import rates
from dropblock_torch.compat import timm as compat

SHAPES = [(3, 4, 13, 11), (2, 3, 7, 7), (1, 2, 5, 9)]
BLOCKS = [1, 2, 3, 4, 5, 7, 16]  # 16: bigger than every map


def _timm_drop_module():
    try:
        from timm.layers import drop
    except ImportError:  # timm imports torchvision, which does not import beside the CPU build of torch
        spec = importlib.util.find_spec("timm")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "layers" / "drop.py"
        module_spec = importlib.util.spec_from_file_location("timm_layers_drop", path)
        drop = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(drop)
    return drop


@pytest.fixture(scope="module")
def timm_drop():
    drop = _timm_drop_module()
    if drop is None:
        pytest.skip("timm is not installed")
    return drop


def both(peer, ours, x, seed, **kwargs):
    """The peer's and our output from the same global seed; each gets its own copy of ``x``."""
    torch.manual_seed(seed)
    old = peer(x.clone(), **kwargs)
    torch.manual_seed(seed)
    new = ours(x.clone(), **kwargs)
    return old, new


def randn(shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --- bit-identity with the real timm --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("couple_channels", [True, False])
@pytest.mark.parametrize("block_size", BLOCKS)
def test_bit_identical_to_timm(timm_drop, block_size, couple_channels, dtype):
    grid = itertools.product(enumerate(SHAPES), (0.1, 0.3), (1.0, 0.5), (True, False))
    for (seed, shape), drop_prob, gamma_scale, scale_by_keep in grid:
        x = randn(shape, dtype, seed)
        options = dict(
            drop_prob=drop_prob,
            block_size=block_size,
            gamma_scale=gamma_scale,
            couple_channels=couple_channels,
            scale_by_keep=scale_by_keep,
        )
        old, new = both(timm_drop.drop_block_2d, compat.drop_block_2d, x, seed, **options)
        assert new.dtype == dtype and same_bits(new, old), options
        # Something was dropped and something kept in most draws: the comparison is not vacuous.
    old, new = both(timm_drop.drop_block_2d, compat.drop_block_2d, randn((2, 3, 16, 16), dtype), 5, drop_prob=0.3)
    assert same_bits(new, old) and 0 < (new == 0).sum() < new.numel()
    assert (new.signbit() & (new == 0)).any()  # not vacuous: a dropped negative unit is -0.0, as in timm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("couple_channels", [True, False])
def test_bit_identical_with_noise(timm_drop, couple_channels, dtype):
    for (seed, shape), block_size in itertools.product(enumerate(SHAPES), (2, 3, 5)):
        x = randn(shape, dtype, seed)
        options = dict(drop_prob=0.3, block_size=block_size, with_noise=True, couple_channels=couple_channels)
        old, new = both(timm_drop.drop_block_2d, compat.drop_block_2d, x, seed, **options)
        assert same_bits(new, old), options


@pytest.mark.parametrize("with_noise", [False, True])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_bit_identical_inplace(timm_drop, scale_by_keep, with_noise):
    x = randn((2, 3, 12, 10))
    old_x, new_x = x.clone(), x.clone()
    options = dict(drop_prob=0.3, block_size=3, inplace=True, scale_by_keep=scale_by_keep, with_noise=with_noise)
    torch.manual_seed(1)
    old = timm_drop.drop_block_2d(old_x, **options)
    torch.manual_seed(1)
    new = compat.drop_block_2d(new_x, **options)
    assert new is new_x and old is old_x
    assert same_bits(new_x, old_x) and not torch.equal(new_x, x)


def test_the_module_draws_the_same_sequence_of_masks(timm_drop):
    options = dict(drop_prob=0.2, block_size=4, gamma_scale=0.75, couple_channels=False)
    old, new = timm_drop.DropBlock2d(**options), compat.DropBlock2d(**options)
    x = randn((2, 3, 9, 9))
    torch.manual_seed(3)
    old_outputs = [old(x) for _ in range(4)]
    torch.manual_seed(3)
    new_outputs = [new(x) for _ in range(4)]
    for a, b in zip(old_outputs, new_outputs):
        assert same_bits(b, a)
    assert not torch.equal(new_outputs[0], new_outputs[1])


@pytest.mark.parametrize("couple_channels", [True, False])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_gradients_are_bit_identical(timm_drop, scale_by_keep, couple_channels):
    x = randn((2, 3, 10, 10))
    weights = randn(x.shape, seed=9)
    grads = []
    for function in (timm_drop.drop_block_2d, compat.drop_block_2d):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(0)
        (
            function(leaf, 0.3, 3, scale_by_keep=scale_by_keep, couple_channels=couple_channels) * weights
        ).sum().backward()
        grads.append(leaf.grad)
    assert same_bits(grads[1], grads[0]) and (grads[1] == 0).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_timm_up_to_its_rounding(timm_drop, dtype):
    x = randn((2, 4, 16, 16), dtype)
    old, new = both(timm_drop.drop_block_2d, compat.drop_block_2d, x, 0, drop_prob=0.3, block_size=3)
    assert new.dtype == old.dtype == dtype
    assert torch.equal(new == 0, old == 0)  # the same mask
    # timm rounds the scale to the dtype, then the product: at most 2 ulp apart (rtol = 2 ulp).
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(new.float(), old.float(), rtol=2 * ulp, atol=0)


# --- inf and NaN: timm's arithmetic, kept as it is ----------------------------------------------


@pytest.mark.parametrize("couple_channels", [True, False])
@pytest.mark.parametrize("with_noise", [False, True])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_inf_and_nan_in_x_give_timms_bits(timm_drop, value, with_noise, couple_channels):
    x = randn((2, 3, 8, 8))
    x[:, :, ::2] = value
    options = dict(drop_prob=0.5, block_size=3, with_noise=with_noise, couple_channels=couple_channels)
    for inplace in (False, True):
        old, new = both(timm_drop.drop_block_2d, compat.drop_block_2d, x, 0, inplace=inplace, **options)
        assert same_bits(new, old), inplace
    torch.manual_seed(0)
    dropped = compat.drop_block_2d(torch.ones(x.shape), 0.5, 3, couple_channels=couple_channels) == 0
    non_finite = ~torch.isfinite(x)
    # Not vacuous: non-finite units both dropped (NaN there, inf * 0 as in timm) and kept.
    assert (dropped & non_finite).any() and (~dropped & non_finite).any()
    assert torch.isnan(new[dropped & non_finite]).all()


@pytest.mark.parametrize("couple_channels", [True, False])
def test_a_dropped_unit_is_x_times_zero_and_a_kept_one_x_times_the_scale(couple_channels):
    x = randn((2, 3, 8, 8))
    for channel, value in enumerate((float("inf"), float("-inf"), float("nan"))):
        x[:, channel, :, ::3] = value
    options = dict(drop_prob=0.5, block_size=3, couple_channels=couple_channels)
    torch.manual_seed(0)
    kept = compat.drop_block_2d(torch.ones(x.shape), scale_by_keep=False, **options) != 0
    assert kept.any() and not kept.all()
    scale = kept.numel() / (kept.sum().float() + 1e-7)
    for inplace, scale_by_keep in itertools.product((False, True), (False, True)):
        torch.manual_seed(0)
        out = compat.drop_block_2d(x.clone(), inplace=inplace, scale_by_keep=scale_by_keep, **options)
        factor = scale if scale_by_keep else torch.tensor(1.0)
        assert same_bits(out, torch.where(kept, x * factor, x * 0.0)), (inplace, scale_by_keep)


# --- fixed where timm misbehaves --------------------------------------------------------------


@pytest.mark.parametrize("default", [torch.float16, torch.bfloat16])
def test_fixed_a_half_precision_default_dtype_changes_no_bit(default):
    x = randn((2, 3, 8, 8))
    for couple_channels in (True, False):
        torch.manual_seed(0)
        expected = compat.drop_block_2d(x, 0.3, 3, couple_channels=couple_channels)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(default)
        try:
            torch.manual_seed(0)
            out = compat.drop_block_2d(x, 0.3, 3, couple_channels=couple_channels)
        finally:
            torch.set_default_dtype(previous)
        assert same_bits(out, expected), couple_channels


@pytest.mark.parametrize("couple_channels", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fixed_half_precision_is_the_float32_result_rounded_once(timm_drop, dtype, couple_channels):
    x = randn((4, 8, 16, 16), dtype)
    for inplace in (False, True):
        torch.manual_seed(1)
        new = compat.drop_block_2d(x.clone(), 0.2, 3, couple_channels=couple_channels, inplace=inplace)
        torch.manual_seed(1)
        # The same seeds: bernoulli_ draws alike in every dtype.
        wide = compat.drop_block_2d(x.float(), 0.2, 3, couple_channels=couple_channels)
        assert new.dtype == dtype and same_bits(new, wide.to(dtype))
    torch.manual_seed(1)
    old = timm_drop.drop_block_2d(x, 0.2, 3, couple_channels=couple_channels)
    assert not torch.equal(old, wide.to(dtype))  # timm rounds the scale to the dtype first


def test_fixed_float16_with_everything_dropped_gives_zeros(timm_drop):
    x = randn((2, 3, 6, 6), torch.float16)
    # block_size = the map and drop_prob 1: gamma is 1, every position a seed.
    old, new = both(timm_drop.drop_block_2d, compat.drop_block_2d, x, 0, drop_prob=1.0, block_size=6)
    assert torch.isnan(old).all()  # the scale numel / 1e-7 overflows float16; 0 * inf
    assert new.dtype == torch.float16 and (new == 0).all()


def test_fixed_float16_with_one_unit_kept_stays_finite(timm_drop):
    x = torch.full((1, 1, 300, 300), 0.5, dtype=torch.float16)
    # Block 1: gamma = drop_prob, about one of the 90000 units kept; its scale 90000 > float16's 65504.
    drop_prob = 1 - 1 / 90000
    for seed in range(40):
        old, new = both(timm_drop.drop_block_2d, compat.drop_block_2d, x, seed, drop_prob=drop_prob, block_size=1)
        if int((new != 0).sum()) == 1:
            break
    else:
        pytest.fail("no draw kept exactly one unit")
    # timm: the scale is inf in float16, so the kept unit is inf and the dropped ones 0 * inf = NaN.
    assert torch.isinf(old).sum() == 1 and torch.isnan(old).sum() == x.numel() - 1
    assert torch.isfinite(new).all()
    torch.testing.assert_close(new.float().sum(), torch.tensor(45000.0), rtol=1e-3, atol=0)


def test_all_dropped_gives_zeros():
    torch.manual_seed(0)
    out = compat.drop_block_2d(randn((2, 3, 6, 6)), 1.0, 6)
    assert (out == 0).all()


def test_fixed_a_seed_rate_above_one_saturates(timm_drop):
    x = randn((2, 3, 8, 8))
    with pytest.raises(RuntimeError, match="bernoulli_"):
        timm_drop.drop_block_2d(x, 0.5, 3, gamma_scale=30.0)
    torch.manual_seed(0)
    assert (compat.drop_block_2d(x, 0.5, 3, gamma_scale=30.0) == 0).all()


def test_fixed_zero_drop_prob_returns_x_and_draws_nothing(timm_drop):
    x = randn((2, 3, 8, 8))
    state = torch.get_rng_state()
    assert compat.drop_block_2d(x, 0.0, 3) is x
    assert torch.equal(torch.get_rng_state(), state)
    timm_drop.drop_block_2d(x, 0.0, 3)
    assert not torch.equal(torch.get_rng_state(), state)  # timm draws a mask that drops nothing


def test_fixed_drop_block_2d_traces_with_torch_fx_in_training_mode(timm_drop):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), compat.DropBlock2d(0.3, 3))
    traced = torch.fx.symbolic_trace(model)
    assert any(node.target is compat.drop_block_2d for node in traced.graph.nodes)
    x = randn((2, 3, 8, 8))
    torch.manual_seed(0)
    expected = model(x)
    torch.manual_seed(0)
    assert torch.equal(traced(x), expected)
    with pytest.raises(torch.fx.proxy.TraceError):  # timm unpacks x.shape
        torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), timm_drop.DropBlock2d(0.3, 3)))


# --- argument checks: timm's arguments accepted, bad ones named -----------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(drop_prob=1.5), ValueError, r"drop_prob.*1\.5"),
        (dict(drop_prob=-0.1), ValueError, "drop_prob"),
        (dict(drop_prob=float("nan")), ValueError, "drop_prob"),
        (dict(drop_prob="0.1"), TypeError, "drop_prob"),
        (dict(drop_prob=True), TypeError, "drop_prob"),
        (dict(block_size=0), ValueError, "block_size"),
        (dict(block_size=2.5), TypeError, "block_size"),
        (dict(block_size=(3, 3)), TypeError, "block_size"),
        (dict(block_size=True), TypeError, "block_size"),
        (dict(gamma_scale=-1.0), ValueError, "gamma_scale"),
        (dict(gamma_scale=float("nan")), ValueError, "gamma_scale"),
        (dict(gamma_scale=float("inf")), ValueError, "gamma_scale"),
        (dict(gamma_scale="1"), TypeError, "gamma_scale"),
        (dict(with_noise=1), TypeError, "with_noise"),
        (dict(inplace="False"), TypeError, "inplace"),
        (dict(couple_channels=None), TypeError, "couple_channels"),
        (dict(scale_by_keep=0), TypeError, "scale_by_keep"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    x = randn((2, 3, 8, 8))
    with pytest.raises(error, match=match):
        compat.drop_block_2d(x, **kwargs)
    with pytest.raises(error, match=match):
        compat.DropBlock2d(**kwargs)


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.ones(2, 3, 8), ValueError, r"x must have 4 dimensions \(N, C, H, W\).*x\.dim\(\)=3"),
        (torch.ones(1, 2, 3, 8, 8), ValueError, r"x\.dim\(\)=5"),
        (torch.ones(2, 3, 8, 8, dtype=torch.int64), TypeError, "x.dtype=torch.int64"),
        (torch.ones(2, 3, 8, 8).to(torch.float8_e4m3fn), TypeError, "float8"),
        (np.ones((2, 3, 8, 8), np.float32), TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_inputs_are_named(x, error, match):
    with pytest.raises(error, match=match):
        compat.drop_block_2d(x)


def test_timms_own_values_are_accepted():
    torch.manual_seed(0)
    x = randn((2, 3, 8, 8))
    # ints and 0-dim tensors where timm code passes them; gamma_scale 0.25 as timm's ResNets do.
    for drop_prob, block_size, gamma_scale in [(1, 3, 0.25), (torch.tensor(0.2), np.int64(5), 1), (0.1, 7, 1.0)]:
        out = compat.drop_block_2d(x, drop_prob, block_size, gamma_scale)
        assert out.shape == x.shape


def test_deprecated_kwargs_are_accepted_silently_and_others_warned():
    # The project's pytest turns every warning into an error: these two emit none.
    layer = compat.DropBlock2d(drop_prob=0.1, batchwise=True, fast=False)
    assert layer.drop_prob == 0.1
    with pytest.warns(UserWarning, match="DropBlock2d\\(\\) got unexpected keyword argument 'partial_edge_blocks'"):
        compat.DropBlock2d(drop_prob=0.1, partial_edge_blocks=True)


def test_extra_repr_names_every_option():
    layer = compat.DropBlock2d(0.2, 5, gamma_scale=0.25, couple_channels=False)
    assert repr(layer) == (
        "DropBlock2d(drop_prob=0.2, block_size=5, gamma_scale=0.25, with_noise=False, inplace=False, "
        "couple_channels=False, scale_by_keep=True)"
    )


# --- the properties timm's own tests assert, in our words ------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (2, 3, 4, 8), (2, 3, 10, 5), (2, 3, 3, 3), (2, 3, 7, 14)])
@pytest.mark.parametrize("block_size", [2, 3, 4, 5, 6])
def test_shape_and_dtype_are_kept(shape, block_size):
    out = compat.drop_block_2d(torch.ones(shape), 0.1, block_size)
    assert out.shape == shape and out.dtype == torch.float32


def test_eval_mode_and_zero_rate_are_the_identity():
    x = randn((2, 3, 8, 8))
    assert compat.DropBlock2d(0.5, 3).eval()(x) is x
    assert compat.DropBlock2d(0.0, 3)(x) is x
    torch.manual_seed(0)
    assert not torch.equal(compat.DropBlock2d(0.5, 3)(x), x)


def test_the_dropped_fraction_is_the_expected_one():
    # timm's own check: scale_by_keep=False on ones, dropped units are exact zeros.
    shape, block_size, drop_prob = (64, 2, 56, 56), 7, 0.1
    torch.manual_seed(123)
    out = compat.drop_block_2d(torch.ones(shape), drop_prob, block_size, scale_by_keep=False)
    measured = float((out == 0).float().mean())
    # Seeds on the full map at timm's rate drop this fraction in expectation (about 0.098).
    gamma = drop_prob * 56 * 56 / 49 / 50**2
    expected = rates.expected_drop_fraction((56, 56), block_size, gamma, seed_region="full")
    # One mask's fraction has a variance of about gamma * 49**2 / 56**2 (overlapping blocks), so
    # over 64 masks an sd of about 0.0055: 0.025 is 4.5 sd, a false alarm below 1 in 100000.
    assert abs(measured - expected) < 0.025, (measured, expected)
    assert abs(measured - drop_prob) < 0.03  # timm's own tolerance


def test_channels_share_the_mask_unless_uncoupled():
    x = torch.ones(2, 4, 16, 16)
    torch.manual_seed(42)
    coupled = compat.drop_block_2d(x, 0.3, 5) == 0
    assert coupled.any() and (coupled == coupled[:, :1]).all()
    torch.manual_seed(42)
    uncoupled = compat.drop_block_2d(x, 0.3, 5, couple_channels=False) == 0
    assert not torch.equal(uncoupled[0, 0], uncoupled[0, 1])


def test_noise_fills_the_dropped_units_and_keeps_the_rest():
    x = torch.ones(2, 3, 16, 16)
    torch.manual_seed(42)
    out = compat.drop_block_2d(x, 0.3, 5, with_noise=True)
    changed = out != 1
    assert changed.any() and len(torch.unique(out[changed])) > 10
    assert (out[~changed] == 1).all()  # kept units are not rescaled


def test_scale_by_keep_scales_the_kept_units():
    x = torch.ones(2, 3, 16, 16)
    torch.manual_seed(42)
    scaled = compat.drop_block_2d(x, 0.3, 5)
    kept = scaled != 0
    torch.testing.assert_close(scaled[kept], torch.full_like(scaled[kept], x.numel() / 3 / kept[:, 0].sum()))
    torch.manual_seed(42)
    unscaled = compat.drop_block_2d(x, 0.3, 5, scale_by_keep=False)
    assert torch.equal(unscaled != 0, kept) and (unscaled[kept] == 1).all()


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("couple_channels", [True, False])
def test_blocks_are_centred_on_timms_seeds(block_size, couple_channels):
    """Without timm: its seeds (``bernoulli_`` on a tensor of the mask's shape and x's dtype) and
    its geometry (a block centred on each seed; for even blocks one more cell before it)."""
    shape = (2, 3, 11, 9)
    kh, kw = min(block_size, 11), min(block_size, 9)
    gamma = 0.2 * 11 * 9 / (kh * kw) / ((11 - kh + 1) * (9 - kw + 1))
    mask_shape = (2, 1 if couple_channels else 3, 11, 9)
    torch.manual_seed(7)
    seeds = torch.empty(mask_shape).bernoulli_(gamma).numpy().astype(bool)
    torch.manual_seed(7)
    out = compat.drop_block_2d(torch.ones(shape), 0.2, block_size, couple_channels=couple_channels, scale_by_keep=False)
    expected = np.zeros(mask_shape, bool)
    for n, c, i, j in np.argwhere(seeds):
        top, left = i - kh // 2, j - kw // 2
        expected[n, c, max(top, 0) : top + kh, max(left, 0) : left + kw] = True
    assert seeds.any()
    np.testing.assert_array_equal((out == 0).numpy(), np.broadcast_to(expected, shape))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_bernoulli_draws_alike_in_every_dtype_on_the_cpu(dtype):
    """The drop-ins fill booleans where the peers fill x's dtype: the same seeds, the same state after."""
    for shape, gamma in [((2, 1, 13, 11), 0.05), ((3, 4, 50, 41), 0.3), ((1, 2, 300, 300), 0.97)]:
        torch.manual_seed(0)
        peer = torch.empty(shape, dtype=dtype).bernoulli_(gamma)
        peer_next = torch.rand(4)
        torch.manual_seed(0)
        ours = torch.empty(shape, dtype=torch.bool).bernoulli_(gamma)
        ours_next = torch.rand(4)
        assert torch.equal(ours, peer != 0) and torch.equal(ours_next, peer_next)


def test_training_per_unit_saves_the_boolean_mask_not_a_float_factor():
    x = randn((2, 3, 8, 8)).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = compat.drop_block_2d(x, 0.3, 3, couple_channels=False)
    # A byte per unit for the backward pass, as dropout's mask, not 4 (a float32 factor).
    assert [t.dtype for t in saved if t.numel() == x.numel()] == [torch.bool]
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad != 0, out != 0) and (out == 0).any()


def test_the_gradient_is_the_scaled_keep_mask():
    x = randn((2, 3, 10, 10)).requires_grad_()
    torch.manual_seed(0)
    out = compat.drop_block_2d(x, 0.3, 3)
    out.sum().backward()
    kept = out != 0
    scale = out[kept] / x[kept]
    torch.testing.assert_close(x.grad[kept], scale.detach())
    assert (x.grad[~kept] == 0).all()


def test_channels_last_stays_channels_last():
    x = randn((2, 3, 8, 8)).to(memory_format=torch.channels_last)
    for options in (dict(), dict(couple_channels=False), dict(with_noise=True)):
        out = compat.drop_block_2d(x, 0.3, 3, **options)
        assert out.is_contiguous(memory_format=torch.channels_last), options


def test_compiles_with_fullgraph():
    layer = compat.DropBlock2d(0.3, 3)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = randn((2, 3, 10, 10))
    x[0, 0, 0, 0] = float("inf")
    torch.manual_seed(0)
    expected = layer(x)
    torch.manual_seed(0)
    out = compiled(x)
    assert same_bits(out, expected) and (out == 0).any()


def test_a_timm_resnet_gives_the_same_outputs_with_the_drop_in():
    timm = pytest.importorskip("timm")  # the whole of timm: beside the newest torch only
    # zero_init_last=False: with timm's zero-initialised last norm of each block, what DropBlock
    # does inside a residual branch would not reach the output at all.
    model = timm.create_model("resnet18", num_classes=10, drop_block_rate=0.3, zero_init_last=False)
    swapped = copy.deepcopy(model)
    replaced = 0
    for name, layer in model.named_modules():
        if isinstance(layer, timm.layers.DropBlock2d):
            parent, _, child = name.rpartition(".")
            options = dict(drop_prob=layer.drop_prob, block_size=layer.block_size, gamma_scale=layer.gamma_scale)
            setattr(swapped.get_submodule(parent), child, compat.DropBlock2d(**options))
            replaced += 1
    assert replaced >= 2  # timm puts it in the last two stages
    swapped.load_state_dict(model.state_dict())  # no state of its own: a strict load still fits
    x = randn((2, 3, 96, 96))
    outputs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outputs.append(model(x))
        torch.manual_seed(seed)
        assert torch.equal(swapped(x), outputs[-1]), seed
    assert not torch.equal(outputs[0], outputs[1])  # not vacuous: another draw, other blocks
    model.eval()
    swapped.eval()
    assert torch.equal(swapped(x), model(x))


# torch.func.jvp imports a module of torch that uses torch.jit.script.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("couple_channels", [True, False])
def test_forward_mode_tangents_are_the_gradients_map(couple_channels):
    # The per-unit product's autograd function had no jvp: torch.func.jvp raised.
    x, direction = randn((2, 4, 10, 10)), randn((2, 4, 10, 10), seed=1)
    run = lambda t: compat.drop_block_2d(t, 0.3, 3, couple_channels=couple_channels)  # noqa: E731
    torch.manual_seed(0)
    out, tangent = torch.func.jvp(run, (x,), (direction,))
    leaf = x.clone().requires_grad_()
    torch.manual_seed(0)
    run(leaf).backward(direction)
    # The map is diagonal: its tangent along a direction is its gradient of that cotangent.
    assert same_bits(tangent, leaf.grad) and (tangent == 0).any() and (out == 0).any()
