"""dropblock_jax.linen.DropBlock behaves like linen.Dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

import dropblock_jax as dj
from dropblock_jax import schedules
from dropblock_jax.linen import DropBlock, set_step

X = jnp.asarray(np.random.default_rng(9).uniform(0.5, 1.5, (4, 12, 12, 8)).astype(np.float32))


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool, step=None):
        x = nn.Conv(8, (3, 3))(x)
        x = DropBlock(schedules.ramp(0.3, 5), 3)(x, deterministic=not train, step=step)
        return x.mean()


def test_init_and_apply_with_a_dropout_rng():
    net = Net()
    variables = net.init(jax.random.key(0), X, train=False)
    eval_out = net.apply(variables, X, train=False)
    train_out = net.apply(variables, X, train=True, step=4, rngs={"dropout": jax.random.key(1)})
    assert jnp.isfinite(train_out) and float(train_out) != float(eval_out)
    # Step 0 of the ramp drops nothing, and then needs no rng at all.
    assert float(net.apply(variables, X, train=True, step=0)) == float(eval_out)


def test_collection_key_and_explicit_rng():
    layer = DropBlock(0.2, 3, share_channels=True)
    key = jax.random.key(2)
    out = layer.apply({}, X, deterministic=False, rngs={"dropout": key})
    assert out.shape == X.shape and 0.05 < float((out == 0).mean()) < 0.35
    assert ((out == 0) == (out[..., :1] == 0)).all()  # share_channels reaches the function
    explicit = layer.apply({}, X, deterministic=False, rng=jax.random.key(3))
    np.testing.assert_array_equal(explicit, dj.dropblock(X, jax.random.key(3), 0.2, 3, share_channels=True))


def test_deterministic_field_and_argument_merge():
    assert DropBlock(0.2, 3, deterministic=True).apply({}, X) is X
    with pytest.raises(ValueError, match="deterministic"):
        DropBlock(0.2, 3).apply({}, X)


def test_schedule_without_step_is_a_clear_error():
    with pytest.raises(ValueError, match=r"pass step=\.\.\..*'dropblock' collection.*mutable=\['dropblock'\]"):
        DropBlock(schedules.ramp(0.1, 10), 3).apply({}, X, deterministic=False, rngs={"dropout": jax.random.key(0)})


def test_jit_with_traced_step_does_not_retrace():
    traces = []
    layer = DropBlock(schedules.ramp(0.3, 5), 3)

    @jax.jit
    def apply(step, key):
        traces.append(1)
        return layer.apply({}, X, deterministic=False, step=step, rngs={"dropout": key})

    fractions = [float((apply(step, jax.random.key(step)) == 0).mean()) for step in range(6)]
    assert len(traces) == 1 and fractions[0] == 0.0 and fractions[-1] > 0.1


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: DropBlock(0.1, -1), ValueError, r"block_size=-1"),
        (lambda: DropBlock(-0.5, 3), ValueError, r"drop_prob=-0\.5"),
        (lambda: DropBlock(True, 3), TypeError, r"drop_prob=True"),
        (lambda: DropBlock(0.1, 3, calibrate="False"), TypeError, r"calibrate='False'"),
        (lambda: DropBlock(0.1, 3, share_batch=1), TypeError, r"share_batch=1"),
        (lambda: DropBlock(0.1, 3, auto_step=None), TypeError, r"auto_step=None"),
        (lambda: DropBlock(0.1, 3, deterministic="True"), TypeError, r"deterministic='True'"),
        (lambda: DropBlock(0.1, 3, normalize=None), ValueError, r"normalize=None"),
        (lambda: DropBlock(0.1, 3, spatial_dims=0), ValueError, r"spatial_dims=0"),
    ],
)
def test_bad_fields_fail_at_construction(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_calls_name_the_argument():
    layer, rngs = DropBlock(0.1, 3), {"dropout": jax.random.key(0)}
    with pytest.raises(TypeError, match=r"deterministic='no'"):
        layer.apply({}, X, deterministic="no", rngs=rngs)
    with pytest.raises(TypeError, match=r"drop_prob"):
        jax.jit(lambda p: layer.apply({}, X, deterministic=False, drop_prob=p, rngs=rngs))(jnp.array(True))
    with pytest.raises(TypeError, match=r"x\.dtype=float8_e4m3fn"):
        layer.apply({}, X.astype(jnp.float8_e4m3fn), deterministic=False, rngs=rngs)


class TwoBlocks(nn.Module):
    auto_step: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        x = DropBlock(schedules.ramp(0.3, 4), 3, auto_step=self.auto_step, name="first")(x, deterministic=not train)
        x = DropBlock(0.1, 3, name="constant")(x, deterministic=not train)
        return DropBlock(schedules.linear(0.0, 0.2, 3), 3, name="second")(x, deterministic=not train)


def steps(variables):
    return {name: int(value["step"]) for name, value in variables["dropblock"].items()}


def test_the_step_lives_in_the_dropblock_collection_and_advances_when_mutable():
    model = TwoBlocks()
    variables = model.init(jax.random.key(0), X, train=False)  # created by a deterministic init too
    assert steps(variables) == {"first": 0, "second": 0}
    rngs = {"dropout": jax.random.key(1)}
    out, updates = model.apply(variables, X, train=True, rngs=rngs, mutable=["dropblock"])
    variables = {**variables, **updates}
    assert steps(variables) == {"first": 1, "second": 1}
    assert float((out == 0).mean()) > 0  # the constant layer drops (the schedules are at step 0)
    # Not mutable in training: refused, as BatchNorm refuses immutable batch_stats (a frozen step
    # would keep the ramp at its start and silently drop nothing); eval mode never advances it.
    with pytest.raises(ValueError, match=r"pass mutable=\['dropblock'\] to apply"):
        model.apply(variables, X, train=True, rngs=rngs)
    _, updates = model.apply(variables, X, train=False, mutable=["dropblock"])
    assert steps({**variables, **updates}) == {"first": 1, "second": 1}
    # auto_step=False: only set_step moves it.
    manual = TwoBlocks(auto_step=False)
    _, updates = manual.apply(variables, X, train=True, rngs=rngs, mutable=["dropblock"])
    assert steps({**variables, **updates}) == {"first": 1, "second": 2}


def test_a_step_at_call_time_overrides_the_variable_and_leaves_it():
    layer = DropBlock(schedules.ramp(0.3, 5), 3)
    variables = layer.init(jax.random.key(0), X, deterministic=True)
    rngs = {"dropout": jax.random.key(1)}
    out, updates = layer.apply(variables, X, deterministic=False, step=5, rngs=rngs, mutable=["dropblock"])
    assert int(updates["dropblock"]["step"]) == 0 and float((out == 0).mean()) > 0.1
    stored, _ = layer.apply(variables, X, deterministic=False, rngs=rngs, mutable=["dropblock"])  # step 0
    np.testing.assert_array_equal(stored, X)
    # With auto_step=False the stored step is read and the collection may stay immutable.
    manual = DropBlock(schedules.ramp(0.3, 5), 3, auto_step=False)
    np.testing.assert_array_equal(manual.apply(variables, X, deterministic=False, rngs=rngs), X)


def test_set_step_sets_every_step_and_keeps_the_mapping_type():
    variables = TwoBlocks().init(jax.random.key(0), X, train=False)
    assert steps(set_step(variables, 3)) == {"first": 3, "second": 3} and steps(variables) == {"first": 0, "second": 0}
    frozen = set_step(FrozenDict(variables), 2)
    assert isinstance(frozen, FrozenDict) and steps(frozen) == {"first": 2, "second": 2}
    variables = {"params": {"w": jnp.ones(3)}, **variables}
    traced = jax.jit(set_step)(variables, jnp.uint32(9))
    assert steps(traced) == {"first": 9, "second": 9}
    np.testing.assert_array_equal(traced["params"]["w"], 1.0)
    with pytest.raises(ValueError, match=r"no 'dropblock' collection"):
        set_step({"params": {}}, 1)
    for bad in (0.5, False, jnp.arange(2)):
        with pytest.raises(TypeError, match=r"step must be one integer"):
            set_step(variables, bad)


def test_a_call_time_rate_may_be_traced_without_retracing():
    traces = []
    layer = DropBlock(0.0, 3)

    @jax.jit
    def apply(p):
        traces.append(1)
        return layer.apply({}, X, deterministic=False, drop_prob=p, rng=jax.random.key(0))

    fractions = [float((apply(p) == 0).mean()) for p in (0.0, 0.1, 0.3)]
    assert len(traces) == 1 and fractions[0] == 0.0 < fractions[1] < fractions[2]


def test_training_without_a_key_says_how_to_pass_one():
    layer = DropBlock(0.1, 3)
    with pytest.raises(ValueError, match=r"no random key: pass rngs=\{'dropout': key\} to apply"):
        layer.apply({}, X, deterministic=False)
    np.testing.assert_array_equal(DropBlock(0.0, 3).apply({}, X, deterministic=False), X)  # nothing to draw


def test_init_in_training_mode_falls_back_to_the_params_rng_as_dropout_does():
    layer, reference = DropBlock(0.1, 3, deterministic=False), nn.Dropout(0.1, deterministic=False)
    reference.init(jax.random.key(0), X)  # linen.Dropout draws from "params" when "dropout" is missing
    assert layer.init(jax.random.key(0), X) == {}


class ScannedBlocks(nn.Module):
    """Three scheduled layers stacked by nn.scan: their steps are one (3,) leaf."""

    @nn.compact
    def __call__(self, x):
        class Block(nn.Module):
            @nn.compact
            def __call__(self, x, _):
                return DropBlock(schedules.ramp(0.5, 10), 3, deterministic=False)(x), None

        stacked = nn.scan(Block, variable_axes={"dropblock": 0}, split_rngs={"params": True, "dropout": True}, length=3)
        return stacked()(x, None)[0]


def test_set_step_keeps_the_shape_and_dtype_of_steps_stacked_by_scan():
    model = ScannedBlocks()
    variables = model.init(jax.random.key(0), X)
    (name,) = variables["dropblock"]
    assert variables["dropblock"][name]["DropBlock_0"]["step"].shape == (3,)
    variables = set_step(variables, 7)
    stepped = variables["dropblock"][name]["DropBlock_0"]["step"]
    assert stepped.shape == (3,) and stepped.dtype == jnp.int32
    np.testing.assert_array_equal(stepped, [7, 7, 7])
    out, updates = model.apply(variables, X, rngs={"dropout": jax.random.key(1)}, mutable=["dropblock"])
    np.testing.assert_array_equal(updates["dropblock"][name]["DropBlock_0"]["step"], [8, 8, 8])
    # Three layers at ramp(0.5, 10)(7) = 0.35 each keep about 0.65**3 of the units.
    assert 0.6 < float((out == 0).mean()) < 0.85


def test_a_mutable_collection_that_was_not_given_to_apply_is_a_clear_error():
    layer = DropBlock(schedules.ramp(0.3, 5), 3)
    variables = layer.init(jax.random.key(0), X, deterministic=True)
    rngs = {"dropout": jax.random.key(1)}
    # The step would be created at 0 by every call and the ramp would never leave 0.
    for manual in (layer, DropBlock(schedules.ramp(0.3, 5), 3, auto_step=False)):
        with pytest.raises(ValueError, match=r"no 'dropblock' collection.*'dropblock': variables\['dropblock'\]"):
            manual.apply({"params": {}}, X, deterministic=False, rngs=rngs, mutable=["dropblock"])
    # Not refused: init itself, a call that reads no stored step, and the variables from init.
    assert int(layer.init(jax.random.key(0), X, deterministic=False)["dropblock"]["step"]) == 0
    explicit, _ = layer.apply({}, X, deterministic=False, step=5, rngs=rngs, mutable=["dropblock"])
    assert float((explicit == 0).mean()) > 0.1
    rate_given, _ = layer.apply({}, X, deterministic=False, drop_prob=0.3, rngs=rngs, mutable=["dropblock"])
    assert float((rate_given == 0).mean()) > 0.1
    _, updates = layer.apply(variables, X, deterministic=False, rngs=rngs, mutable=["dropblock"])
    assert int(updates["dropblock"]["step"]) == 1


def test_a_call_time_rate_leaves_the_step_where_it_is():
    layer = DropBlock(schedules.ramp(0.3, 5), 3)
    variables = layer.init(jax.random.key(0), X, deterministic=True)
    _, updates = layer.apply(
        variables, X, deterministic=False, drop_prob=0.2, rngs={"dropout": jax.random.key(1)}, mutable=["dropblock"]
    )
    assert int(updates["dropblock"]["step"]) == 0


@pytest.mark.parametrize("step, shown", [("2", "'2'"), (2.0, "2.0"), (jnp.arange(2), "Array")])
def test_a_bad_call_time_step_names_step(step, shown):
    with pytest.raises(TypeError, match=rf"^step must be one integer, got step={shown}"):
        DropBlock(schedules.ramp(0.3, 5), 3).apply({}, X, deterministic=False, step=step, rng=jax.random.key(0))


def test_a_traced_rate_as_the_field_says_to_pass_it_at_call_time():
    def build_and_apply(rate):
        return DropBlock(rate, 3).apply({}, X, deterministic=False, rng=jax.random.key(0))

    with pytest.raises(TypeError, match=r"drop_prob must be concrete .*traced drop_prob=.*drop_prob=rate"):
        jax.jit(build_and_apply)(0.2)
    call_time = jax.jit(
        lambda rate: DropBlock(0.0, 3).apply({}, X, deterministic=False, drop_prob=rate, rng=jax.random.key(0))
    )
    traced_reference = jax.jit(lambda rate: dj.dropblock(X, jax.random.key(0), rate, 3))
    np.testing.assert_array_equal(call_time(0.2), traced_reference(0.2))
