"""dropblock_torch.compat.torchvision against torchvision.ops' DropBlock, bit for bit, and its fixes.

torchvision imports only beside the newest torch: the tests against it skip elsewhere; tests
that need no peer run everywhere.
"""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from bit_equality import same_bits

from dropblock_common import rates
from dropblock_torch.compat import torchvision as compat

SHAPES = {
    2: [(3, 4, 13, 11), (2, 3, 7, 7), (1, 2, 5, 9), (2, 2, 9, 16)],
    3: [(2, 3, 7, 6, 5), (1, 2, 9, 9, 9), (2, 1, 5, 8, 11)],
}
ODD_BLOCKS = [1, 3, 5, 7, 15]  # 15: bigger than every map; clipped to an odd side on these maps
FUNCTIONS = {2: compat.drop_block2d, 3: compat.drop_block3d}
MODULES = {2: compat.DropBlock2d, 3: compat.DropBlock3d}


@pytest.fixture(scope="module")
def ops():
    return pytest.importorskip("torchvision").ops


def peer_function(ops, dims):
    return {2: ops.drop_block2d, 3: ops.drop_block3d}[dims]


def both(peer, ours, x, seed, *args, **kwargs):
    """The peer's and our output from the same global seed; each gets its own copy of ``x``."""
    torch.manual_seed(seed)
    old = peer(x.clone(), *args, **kwargs)
    torch.manual_seed(seed)
    new = ours(x.clone(), *args, **kwargs)
    return old, new


def randn(shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def clipped(block_size, shape):
    return min(block_size, *shape[2:])


# --- bit-identity with the real torchvision ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block_size", ODD_BLOCKS)
@pytest.mark.parametrize("dims", [2, 3])
def test_bit_identical_to_torchvision(ops, dims, block_size, dtype):
    compared = 0
    for (seed, shape), p, eps in itertools.product(enumerate(SHAPES[dims]), (0.1, 0.4), (1e-6, 1e-3)):
        if clipped(block_size, shape) % 2 == 0:  # torchvision refuses it (fixed, tested below)
            continue
        x = randn(shape, dtype, seed)
        old, new = both(peer_function(ops, dims), FUNCTIONS[dims], x, seed, p, block_size, eps=eps)
        assert new.dtype == dtype and same_bits(new, old), (shape, p, eps)
        compared += 1
    assert compared >= 4
    x = randn((2, 3, 11, 11, 11)[: dims + 2], dtype)
    old, new = both(peer_function(ops, dims), FUNCTIONS[dims], x, 9, 0.3, 3)
    assert same_bits(new, old) and 0 < (new == 0).sum() < new.numel()  # not vacuous
    assert (new.signbit() & (new == 0)).any()  # a dropped negative unit is -0.0, as in torchvision


@pytest.mark.parametrize("dims", [2, 3])
def test_bit_identical_inplace(ops, dims):
    x = randn((2, 3, 9, 9, 9)[: dims + 2])
    old_x, new_x = x.clone(), x.clone()
    torch.manual_seed(1)
    old = peer_function(ops, dims)(old_x, 0.3, 3, inplace=True)
    torch.manual_seed(1)
    new = FUNCTIONS[dims](new_x, 0.3, 3, inplace=True)
    assert new is new_x and old is old_x
    assert same_bits(new_x, old_x) and not torch.equal(new_x, x)


@pytest.mark.parametrize("dims", [2, 3])
def test_the_modules_draw_the_same_sequence_of_masks(ops, dims):
    old_type = {2: ops.DropBlock2d, 3: ops.DropBlock3d}[dims]
    old, new = old_type(0.2, 3, eps=1e-4), MODULES[dims](0.2, 3, eps=1e-4)
    x = randn((2, 3, 7, 8, 9)[: dims + 2])
    torch.manual_seed(3)
    old_outputs = [old(x) for _ in range(4)]
    torch.manual_seed(3)
    new_outputs = [new(x) for _ in range(4)]
    for a, b in zip(old_outputs, new_outputs):
        assert same_bits(b, a)
    assert not torch.equal(new_outputs[0], new_outputs[1])
    assert repr(new) == repr(old)
    assert old.eval()(x) is x and new.eval()(x) is x


@pytest.mark.parametrize("dims", [2, 3])
def test_gradients_are_bit_identical(ops, dims):
    x = randn((2, 3, 8, 8, 8)[: dims + 2])
    weights = randn(x.shape, seed=9)
    grads = []
    for function in (peer_function(ops, dims), FUNCTIONS[dims]):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(0)
        (function(leaf, 0.3, 3) * weights).sum().backward()
        grads.append(leaf.grad)
    assert same_bits(grads[1], grads[0]) and (grads[1] == 0).any()


def test_float16_is_torchvision_up_to_its_rounding_where_torchvision_is_sane(ops):
    # Below 2048 kept units torchvision's float16 count is exact; it rounds the scale, then the product.
    x = randn((2, 4, 11, 11), torch.float16)
    old, new = both(ops.drop_block2d, compat.drop_block2d, x, 0, 0.3, 3)
    assert new.dtype == old.dtype == torch.float16
    assert torch.equal(new == 0, old == 0)
    ulp = torch.finfo(torch.float16).eps
    torch.testing.assert_close(new.float(), old.float(), rtol=2 * ulp, atol=0)


# --- fixed where torchvision misbehaves -----------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fixed_half_precision_is_the_float32_result_rounded_once(dims, dtype):
    x = randn((4, 8, 16, 16) if dims == 2 else (2, 4, 8, 8, 8), dtype)
    for inplace in (False, True):
        torch.manual_seed(1)
        new = FUNCTIONS[dims](x.clone(), 0.2, 3, inplace=inplace)
        torch.manual_seed(1)
        wide = FUNCTIONS[dims](x.float(), 0.2, 3)  # the same seeds: bernoulli_ draws alike in every dtype
        assert new.dtype == dtype and torch.equal(new, wide.to(dtype))


def test_fixed_a_large_float16_input_is_not_zeroed(ops):
    x = randn((8, 64, 16, 16), torch.float16)  # 131072 units: the float16 count overflows
    old, new = both(ops.drop_block2d, compat.drop_block2d, x, 0, 0.1, 3)
    assert (old == 0).all()  # torchvision: numel / inf = 0
    torch.manual_seed(0)
    wide = compat.drop_block2d(x.float(), 0.1, 3)
    assert torch.equal(new, wide.to(torch.float16)) and 0.8 < float((new != 0).float().mean()) < 0.98


def test_fixed_bfloat16_is_counted_and_scaled_exactly(ops):
    x = randn((8, 32, 16, 16), torch.bfloat16)
    old, new = both(ops.drop_block2d, compat.drop_block2d, x, 0, 0.1, 3)
    torch.manual_seed(0)
    wide = compat.drop_block2d(x.float(), 0.1, 3)
    assert torch.equal(new, wide.to(torch.bfloat16))
    assert torch.equal(new == 0, old == 0) and not torch.equal(old, new)  # torchvision rounds the count


def test_fixed_everything_dropped_gives_zeros(ops):
    # block_size = the map and p 1: gamma 1, one seed per map, every unit dropped.
    for dtype, eps in [(torch.float16, 1e-6), (torch.float32, 0.0), (torch.float64, 0.0)]:
        x = randn((2, 3, 7, 7), dtype)
        old, new = both(ops.drop_block2d, compat.drop_block2d, x, 0, 1.0, 7, eps=eps)
        assert torch.isnan(old).all(), dtype  # 0 * (numel / eps) with an overflow, or 0 / 0
        assert new.dtype == dtype and (new == 0).all()


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_inf_and_nan_in_the_input_give_torchvisions_bits(ops, value):
    x = randn((2, 3, 9, 9))
    x[:, :, ::2] = value
    for inplace in (False, True):
        old, new = both(ops.drop_block2d, compat.drop_block2d, x, 0, 0.5, 3, inplace=inplace)
        assert same_bits(new, old), inplace
    torch.manual_seed(0)
    dropped = compat.drop_block2d(torch.ones(x.shape), 0.5, 3) == 0
    non_finite = ~torch.isfinite(x)
    # Not vacuous: non-finite units both dropped (NaN there, inf * 0 as in torchvision) and kept.
    assert (dropped & non_finite).any() and (~dropped & non_finite).any()
    assert torch.isnan(new[dropped & non_finite]).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_a_dropped_unit_is_x_times_zero_and_a_kept_one_x_times_the_scale(dims):
    shape = (2, 3, 9, 9, 9)[: dims + 2]
    x = randn(shape)
    for channel, value in enumerate((float("inf"), float("-inf"), float("nan"))):
        x[:, channel, ..., ::3] = value
    torch.manual_seed(0)
    kept = FUNCTIONS[dims](torch.ones(shape), 0.5, 3) != 0
    assert kept.any() and not kept.all()
    scale = kept.numel() / (1e-6 + kept.sum().float())
    for inplace in (False, True):
        torch.manual_seed(0)
        out = FUNCTIONS[dims](x.clone(), 0.5, 3, inplace=inplace)
        assert same_bits(out, torch.where(kept, x * scale, x * 0.0)), inplace


@pytest.mark.parametrize("block_size", [2, 4, 6, 7])
def test_fixed_even_blocks_work_inside_the_map(ops, block_size):
    x = randn((2, 3, 6, 9))  # block_size=7 is clipped to 6
    with pytest.raises(ValueError, match="block size should be odd"):
        ops.drop_block2d(x, 0.3, block_size)
    torch.manual_seed(0)
    assert compat.drop_block2d(x, 0.3, block_size).shape == x.shape


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5])
def test_blocks_lie_inside_the_map_on_torchvisions_seeds(dims, block_size):
    """Without torchvision: its seeds (``bernoulli_`` on a tensor of the valid grid's shape and the
    input's dtype) and its geometry (a seed at ``j`` drops ``[j, j + k)``), even blocks too."""
    shape = (2, 3, 9, 8, 7)[: dims + 2]
    spatial = shape[2:]
    k = clipped(block_size, shape)
    gamma = 0.3
    for size in spatial:
        gamma = gamma * size
    gamma = gamma / (k**dims * int(np.prod([size - k + 1 for size in spatial])))
    grid = (*shape[:2], *(size - k + 1 for size in spatial))
    torch.manual_seed(7)
    seeds = torch.empty(grid).bernoulli_(gamma).numpy().astype(bool)
    torch.manual_seed(7)
    out = FUNCTIONS[dims](torch.ones(shape), 0.3, block_size)
    expected = np.zeros(shape, bool)
    for n, c, *corner in np.argwhere(seeds):
        expected[(n, c, *(slice(j, j + k) for j in corner))] = True
    assert seeds.any()
    np.testing.assert_array_equal((out == 0).numpy(), expected)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(p=float("nan")), ValueError, "p must be in"),
        (dict(p=1.5), ValueError, r"p=1\.5"),
        (dict(p=-0.1), ValueError, "p="),
        (dict(p="0.1"), TypeError, "p="),
        (dict(block_size=0), ValueError, "block_size"),
        (dict(block_size=-3), ValueError, "block_size"),
        (dict(block_size=3.0), TypeError, "block_size"),
        (dict(eps=-1.0), ValueError, "eps"),
        (dict(eps=float("nan")), ValueError, "eps"),
        (dict(inplace=1), TypeError, "inplace"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    arguments = dict(p=0.1, block_size=3) | kwargs
    with pytest.raises(error, match=match):
        compat.drop_block2d(randn((2, 3, 8, 8)), **arguments)
    with pytest.raises(error, match=match):
        compat.DropBlock3d(**arguments)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"input must have 4 dimensions \(N, C, H, W\).*input\.dim\(\)=5"):
        compat.drop_block2d(torch.ones(1, 2, 3, 4, 5), 0.1, 3)
    with pytest.raises(ValueError, match=r"input must have 5 dimensions \(N, C, D, H, W\).*input\.dim\(\)=4"):
        compat.drop_block3d(torch.ones(2, 3, 4, 5), 0.1, 3)
    with pytest.raises(TypeError, match="input.dtype=torch.int32"):
        compat.drop_block2d(torch.ones(2, 3, 4, 5, dtype=torch.int32), 0.1, 3)
    with pytest.raises(TypeError, match="training must be True or False"):
        compat.drop_block2d(torch.ones(2, 3, 4, 5), 0.1, 3, training="yes")


def test_torchvisions_checks_still_come_first_in_eval_mode(ops):
    x = randn((2, 3, 8, 8))
    for function in (ops.drop_block2d, compat.drop_block2d):
        with pytest.raises(ValueError):
            function(x, 1.5, 3, training=False)
        with pytest.raises(ValueError):
            function(x[0], 0.1, 3, training=False)


# --- the properties torchvision's own tests assert (test_ops.py, TestDropBlock), in our words ---


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("dims", [2, 3])
def test_zero_p_is_the_identity(dims, inplace):
    x = torch.ones((5, 3, 11, 11, 11)[: dims + 2])
    layer = MODULES[dims](p=0.0, block_size=5, inplace=inplace)
    assert repr(layer) == f"DropBlock{dims}d(p=0.0, block_size=5, inplace={inplace})"
    assert layer(x).equal(x)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dims", [2, 3])
def test_a_block_as_big_as_the_map_drops_whole_maps_or_nothing(dims, seed):
    torch.manual_seed(seed)
    x = torch.ones((5, 3, 11, 11, 11)[: dims + 2])
    out = MODULES[dims](p=0.5, block_size=11)(x)
    per_map = out.flatten(2).count_nonzero(dim=2)
    assert ((per_map == 0) | (per_map == 11**dims)).all()
    assert (per_map == 0).any() or seed != 0


@pytest.mark.parametrize("p", [0.1, 0.2])
@pytest.mark.parametrize("dims", [2, 3])
def test_the_dropped_fraction_is_the_expected_one(dims, p):
    torch.manual_seed(dims * 10 + int(p * 10))
    x = torch.ones((5, 3, 11, 11, 11)[: dims + 2])
    layer = MODULES[dims](p=p, block_size=3)
    with torch.no_grad():
        dropped = sum(int((layer(x) == 0).sum()) for _ in range(250)) / (250 * x.numel())
    # torchvision's own bound: within 15% of p.
    assert abs(p - dropped) / p < 0.15
    # And the analytic expectation at torchvision's rate (valid seeds, the paper's gamma). One
    # map's fraction has a variance of about gamma * seeds * k**(2 * dims) / S**(2 * dims), so over
    # 250 * 15 maps the sd is at most about 0.002 (2D at p=0.2): 0.008 is 4 sd or more.
    gamma = p * 11**dims / (3**dims * 9**dims)
    expected = rates.expected_drop_fraction((11,) * dims, 3, gamma, seed_region="valid")
    assert abs(dropped - expected) < 0.008, (dropped, expected)


def test_the_modules_are_leaves_of_torchvisions_feature_extraction(ops):
    from torchvision.models.feature_extraction import get_graph_node_names

    class Wrapper(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, a):
            return self.layer(a)

    for layer in (compat.DropBlock2d(0.5, 5), compat.DropBlock3d(1.0, 7, inplace=True)):
        train_nodes, eval_nodes = get_graph_node_names(Wrapper(layer))
        assert len(train_nodes) == len(eval_nodes) == 2  # the input and one call


@pytest.mark.parametrize("dims", [2, 3])
def test_the_functions_are_leaves_under_torch_fx(dims):
    model = torch.nn.Sequential(torch.nn.Identity(), MODULES[dims](0.3, 3))
    traced = torch.fx.symbolic_trace(model)
    assert [node.target for node in traced.graph.nodes if node.op == "call_function"] == [FUNCTIONS[dims]]
    x = randn((2, 3, 8, 8, 8)[: dims + 2])
    torch.manual_seed(0)
    expected = model(x)
    torch.manual_seed(0)
    assert torch.equal(traced(x), expected)


def test_channels_last_stays_channels_last():
    x = randn((2, 3, 8, 8)).to(memory_format=torch.channels_last)
    assert compat.drop_block2d(x, 0.3, 3).is_contiguous(memory_format=torch.channels_last)


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


def test_the_drop_ins_import_neither_peer():
    code = (
        "import sys, dropblock_torch.compat.timm, dropblock_torch.compat.torchvision\n"
        "print(sorted({'timm', 'torchvision'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_a_star_import_of_compat_shadows_neither_peer():
    namespace = {}
    exec("from dropblock_torch.compat import *", namespace)
    assert {"timm", "torchvision"}.isdisjoint(namespace) and "DropBlock2D" in namespace


# torch.func.jvp imports a module of torch that uses torch.jit.script.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_forward_mode_tangents_are_the_gradients_map():
    # The per-unit product's autograd function had no jvp: torch.func.jvp raised.
    generator = torch.Generator().manual_seed(0)
    x, direction = torch.randn((2, 4, 10, 10), generator=generator), torch.randn((2, 4, 10, 10), generator=generator)
    run = lambda t: compat.drop_block2d(t, 0.3, 3)  # noqa: E731
    torch.manual_seed(0)
    _, tangent = torch.func.jvp(run, (x,), (direction,))
    leaf = x.clone().requires_grad_()
    torch.manual_seed(0)
    run(leaf).backward(direction)
    # The map is diagonal: its tangent along a direction is its gradient of that cotangent.
    assert same_bits(tangent, leaf.grad) and (tangent == 0).any()
