"""dropblock_jax.linen.DropBlock behaves like linen.Dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropblock_jax as dj
from dropblock_jax import schedules
from dropblock_jax.linen import DropBlock

X = jax.random.uniform(jax.random.key(9), (4, 12, 12, 8), minval=0.5, maxval=1.5)


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
    with pytest.raises(ValueError, match=r"step=\.\.\."):
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


def test_bad_fields_fail_at_construction():
    with pytest.raises(ValueError, match=r"block_size=-1"):
        DropBlock(0.1, -1)
    with pytest.raises(ValueError, match=r"drop_prob=-0\.5"):
        DropBlock(-0.5, 3)
