"""dropblock_torch.compat against the real dropblock 0.3.0 package, bit for bit."""

import json

import numpy as np
import pytest
import torch
from bit_equality import same_bits

from dropblock_torch import compat

dropblock = pytest.importorskip("dropblock")

SHAPES_2D = [(3, 4, 13, 11), (2, 1, 7, 7), (1, 3, 28, 28), (4, 2, 5, 9)]
SHAPES_3D = [(2, 3, 7, 6, 5), (1, 2, 8, 8, 8)]
BLOCKS = [1, 2, 3, 4, 5, 7, 8, 15]


def both_outputs(old_layer, new_layer, x, seed):
    torch.manual_seed(seed)
    old = old_layer(x)
    torch.manual_seed(seed)
    new = new_layer(x)
    return old, new


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize(
    "old_type, new_type, shapes",
    [(dropblock.DropBlock2D, compat.DropBlock2D, SHAPES_2D), (dropblock.DropBlock3D, compat.DropBlock3D, SHAPES_3D)],
)
def test_bit_identical_to_the_package(old_type, new_type, shapes, block_size, dtype):
    compared = 0
    for index, shape in enumerate(shapes):
        for drop_prob in (0.05, 0.2, 0.5):
            x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(index))
            old, new = both_outputs(old_type(drop_prob, block_size), new_type(drop_prob, block_size), x, seed=index)
            if torch.isnan(old).any():  # 0.3.0 divides 0 by 0 when everything is dropped
                assert (new == 0).all()
                continue
            # Signed zeros too: a dropped negative unit is -0.0, as in 0.3.0.
            assert new.dtype == dtype and same_bits(new, old)
            compared += 1
    assert compared >= len(shapes)


def test_the_schedulers_step_the_same_rates_and_outputs():
    old = dropblock.LinearScheduler(dropblock.DropBlock2D(0.0, 3), 0.0, 0.25, 5)
    new = compat.LinearScheduler(compat.DropBlock2D(0.0, 3), 0.0, 0.25, 5)
    x = torch.randn(2, 3, 10, 10)
    for step in range(7):
        old.step()
        new.step()
        assert new.dropblock.drop_prob == old.dropblock.drop_prob
        a, b = both_outputs(old, new, x, seed=step)
        assert same_bits(b, a)


def test_eval_mode_and_zero_rate_are_the_identity():
    x = torch.randn(2, 3, 8, 8)
    assert compat.DropBlock2D(0.0, 3)(x) is x
    assert compat.DropBlock2D(0.3, 3).eval()(x) is x


def test_fixed_everything_dropped_gives_zeros_where_the_package_gives_nan():
    x = torch.randn(2, 3, 6, 6)
    old, new = both_outputs(dropblock.DropBlock2D(1.0, 1), compat.DropBlock2D(1.0, 1), x, seed=0)  # gamma 1
    assert torch.isnan(old).all()
    assert (new == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fixed_half_precision_stays_half(dtype):
    x = torch.randn(2, 3, 64, 64).to(dtype)
    old, new = both_outputs(dropblock.DropBlock2D(0.1, 5), compat.DropBlock2D(0.1, 5), x, seed=1)
    assert old.dtype == torch.float32  # the package's upcast
    assert new.dtype == dtype
    torch.testing.assert_close(new, old.to(dtype), rtol=0, atol=0)


def test_fixed_float_nr_steps():
    with pytest.raises(TypeError):
        dropblock.LinearScheduler(dropblock.DropBlock2D(0.0, 3), 0.0, 0.1, 5e3)
    scheduler = compat.LinearScheduler(compat.DropBlock2D(0.0, 3), 0.0, 0.1, 5e3)
    assert len(scheduler.drop_values) == 5000


def test_fixed_the_scheduler_step_is_in_the_state_dict_and_resumes():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 3, 1), compat.LinearScheduler(compat.DropBlock2D(0.0, 3), 0.0, 0.2, 5)
    )
    for _ in range(3):
        model[1].step()
    state = model.state_dict()
    assert state["1._extra_state"] == {"i": 3}
    resumed = torch.nn.Sequential(
        torch.nn.Conv2d(3, 3, 1), compat.LinearScheduler(compat.DropBlock2D(0.0, 3), 0.0, 0.2, 5)
    )
    resumed.load_state_dict(state)
    assert resumed[1].i == 3 and resumed[1].dropblock.drop_prob == model[1].dropblock.drop_prob
    # A checkpoint written with the old package has no step count and still loads strictly.
    old = torch.nn.Sequential(
        torch.nn.Conv2d(3, 3, 1), dropblock.LinearScheduler(dropblock.DropBlock2D(0.0, 3), 0.0, 0.2, 5)
    )
    resumed.load_state_dict(old.state_dict())


def test_hooks_are_called_from_forward_and_can_be_overridden():
    calls = []

    class Custom(compat.DropBlock2D):
        def _compute_gamma(self, x):
            calls.append("gamma")
            return 1.0  # every position a seed

        def _compute_block_mask(self, mask):
            calls.append("block_mask")
            return super()._compute_block_mask(mask)

    out = Custom(0.1, 3)(torch.randn(2, 3, 8, 8))
    assert calls == ["gamma", "block_mask"] and (out == 0).all()


def test_wrong_rank_names_the_expected_dimensions():
    with pytest.raises(ValueError, match=r"4 dimensions.*x\.dim\(\)=3"):
        compat.DropBlock2D(0.1, 3)(torch.randn(2, 3, 8))


def test_the_scheduler_step_is_a_plain_int_as_in_0_3_0():
    scheduler = compat.LinearScheduler(compat.DropBlock2D(0.0, 3), 0.0, 0.2, 5)
    scheduler.i = 3  # 0.3.0 code sets it by hand
    scheduler.step()
    assert scheduler.i == 4 and json.dumps({"i": scheduler.i}) == '{"i": 4}'
    assert scheduler.dropblock.drop_prob == np.linspace(0.0, 0.2, 5)[3]
    # A checkpoint of the earlier tensor-valued step still loads, strictly.
    legacy = {"i": torch.tensor(2)}
    resumed = compat.LinearScheduler(compat.DropBlock2D(0.0, 3), 0.0, 0.2, 5)
    resumed.load_state_dict(legacy)
    assert resumed.i == 2 and resumed.dropblock.drop_prob == np.linspace(0.0, 0.2, 5)[1]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_inf_and_nan_in_x_give_the_packages_bits(value):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[:, :, ::2] = value
    old, new = both_outputs(dropblock.DropBlock2D(0.5, 3), compat.DropBlock2D(0.5, 3), x, seed=0)
    assert same_bits(new, old)
    torch.manual_seed(0)
    dropped = compat.DropBlock2D(0.5, 3)(torch.ones(x.shape)) == 0
    non_finite = ~torch.isfinite(x)
    # Not vacuous: non-finite units both dropped (NaN there, inf * 0 as in 0.3.0) and kept.
    assert (dropped & non_finite).any() and (~dropped & non_finite).any()
    assert torch.isnan(new[dropped & non_finite]).all()


@pytest.mark.parametrize("value, error", [(float("nan"), ValueError), (1.5, ValueError), ("0.1", TypeError)])
def test_a_bad_drop_prob_set_after_construction_is_named_at_the_next_training_call(value, error):
    layer = compat.DropBlock2D(0.1, 3)
    layer.drop_prob = value
    x = torch.randn(2, 3, 8, 8)
    assert layer.eval()(x) is x  # eval mode: the identity, as before
    with pytest.raises(error, match="drop_prob"):
        layer.train()(x)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((float("nan"), 3), ValueError, r"drop_prob"),
        ((-0.5, 3), ValueError, r"drop_prob=-0\.5"),
        ((1.5, 3), ValueError, r"drop_prob=1\.5"),
        ((0.1, 0), ValueError, r"block_size=0"),
        ((0.1, 2.5), TypeError, r"block_size=2\.5"),
    ],
)
def test_fixed_bad_arguments_are_named_not_silently_run(args, error, match):
    with pytest.raises(error, match=match):
        compat.DropBlock2D(*args)


def test_a_numpy_integer_block_size_is_taken_as_the_package_takes_it():
    old, new = dropblock.DropBlock2D(0.2, np.int64(3)), compat.DropBlock2D(0.2, np.int64(3))
    assert type(new.block_size) is int
    assert same_bits(*both_outputs(old, new, torch.randn(2, 3, 10, 10), seed=0))


@pytest.mark.parametrize("scheduler", ["compat", "twin"])
def test_a_ramped_layer_compiles_with_fullgraph_and_draws_as_eagerly(scheduler):
    # A rate that changes between compiled calls is traced as a symbolic float (validation asked
    # it for a dtype, which dynamo refused), and compat.LinearScheduler set numpy float64 rates,
    # which dynamo traces as tensors (forward branched on one).
    import dropblock_torch as dt

    ramp = compat.LinearScheduler if scheduler == "compat" else dt.LinearScheduler
    model = ramp(compat.DropBlock2D(0.0, 3), 0.0, 0.3, 6)
    compiles = []
    compiled = torch.compile(model, backend=lambda gm, _: compiles.append(gm) or gm.forward, fullgraph=True)
    x = torch.randn(4, 8, 12, 12, generator=torch.Generator().manual_seed(0))
    for step in range(6):
        torch.manual_seed(step)
        out = compiled(x)
        torch.manual_seed(step)
        assert same_bits(out, model(x)), step
        model.step()
    assert (out == 0).any() and len(compiles) <= 2
