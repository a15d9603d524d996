"""The JAX twin in the training code that runs it (DESIGN.md section 7).

A small Flax NNX CNN trained with optax under ``nnx.jit``, with a schedule and gradient
accumulation driven by ``set_step``; a Linen model trained under ``jax.jit`` with its step
collection; models pickled and deep-copied; ``jax.vmap`` / ``nnx.vmap`` over unbatched
examples; inputs holding inf and NaN; bad values from a config.
"""

import copy
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from numpy_reference import dropped_mask

import dropblock_jax as dj
from dropblock_jax import linen as dj_linen
from dropblock_jax import nnx as dj_nnx
from dropblock_jax import schedules

IMAGES = jax.random.normal(jax.random.key(0), (16, 10, 10, 1))
LABELS = (IMAGES.mean(axis=(1, 2, 3)) > 0).astype(jnp.int32)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class NnxNet(nnx.Module):
    def __init__(self, rngs, auto_step=True):
        self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.drop = dj_nnx.DropBlock(schedules.ramp(0.2, 6), 3, auto_step=auto_step, rngs=rngs)
        self.fixed = dj_nnx.DropBlock(0.1, 2, share_channels=True, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.fixed(self.drop(nnx.relu(self.conv(x)))).mean(axis=(1, 2)))


def test_nnx_cnn_with_a_schedule_and_gradient_accumulation_under_nnx_jit():
    model = NnxNet(nnx.Rngs(0, dropout=1), auto_step=False)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    traces = []

    @nnx.jit
    def train_step(model, optimizer, images, labels):
        traces.append(1)
        dj_nnx.set_step(model, optimizer.step)  # one schedule step per optimizer step
        rate = model.drop.drop_prob(model.drop.step[...])
        grads, loss = None, 0.0
        for x, y in zip(jnp.split(images, 2), jnp.split(labels, 2)):  # two micro-batches
            micro_loss, micro_grads = nnx.value_and_grad(lambda m, x, y: cross_entropy(m(x), y))(model, x, y)
            grads = micro_grads if grads is None else jax.tree.map(jnp.add, grads, micro_grads)
            loss += micro_loss / 2
        optimizer.update(model, jax.tree.map(lambda g: g / 2, grads))
        return loss, rate

    losses, rates = zip(
        *[
            (float(loss), float(rate))
            for loss, rate in (train_step(model, optimizer, IMAGES, LABELS) for _ in range(12))
        ]
    )
    assert len(traces) == 1
    # Four forward calls per step would have run the ramp four times as fast.
    np.testing.assert_allclose(rates, [0.2 * min(k, 6) / 6 for k in range(12)], rtol=1e-6, atol=1e-9)
    assert int(model.drop.step[...]) == 11 and int(optimizer.step[...]) == 12
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < np.mean(losses[:3])
    # The constant rate is state, but no parameter: the optimizer never sees it.
    assert [path for path, _ in nnx.to_flat_state(nnx.state(model, dj_nnx.DropRate))] == [("fixed", "rate")]
    assert all("rate" not in path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert model.fixed.drop_prob == 0.1


def test_the_same_seed_gives_the_same_draws_eagerly_and_under_nnx_jit():
    # Step 0 of the ramp has rate 0: eagerly a concrete 0, jitted a traced one. Both draw a key.
    features = jax.nn.relu(jax.random.normal(jax.random.key(4), (8, 10, 10, 8)))

    def run(jit):
        model = NnxNet(nnx.Rngs(0, dropout=1))
        forward = lambda model, x: (model.drop(x), model.fixed(x))  # noqa: E731
        step = nnx.jit(forward) if jit else forward
        return [step(model, features) for _ in range(4)]

    for t, (eager, jitted) in enumerate(zip(run(False), run(True))):
        for a, b in zip(eager, jitted):
            np.testing.assert_array_equal(a, b, err_msg=f"step {t}")
    assert (jitted[0] == 0).sum() > (features == 0).sum()


def test_pickle_and_deepcopy_of_an_nnx_model_holding_a_schedule():
    model = NnxNet(nnx.Rngs(0, dropout=1))
    for _ in range(2):
        model(IMAGES)
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model)]
    expected = [model(IMAGES) for _ in range(2)]  # the original goes on: the copies hold their own state
    assert int(model.drop.step[...]) == 4
    for restored in copies:
        assert int(restored.drop.step[...]) == 2 and restored.drop.drop_prob == schedules.ramp(0.2, 6)
        assert restored.fixed.drop_prob == 0.1 and isinstance(restored.fixed.rate, dj_nnx.DropRate)
        for output in expected:  # the same step, rate and random stream as the original had
            np.testing.assert_array_equal(restored(IMAGES), output)
        nnx.jit(lambda m, x: m(x))(restored, IMAGES)
        assert int(restored.drop.step[...]) == 5


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = dj_linen.DropBlock(schedules.ramp(0.2, 4), 3)(x, deterministic=not train)
        return nn.Dense(2)(x.mean(axis=(1, 2)))


def test_linen_cnn_trains_under_jax_jit_with_its_step_collection():
    model = LinenNet()
    variables = model.init(jax.random.key(0), IMAGES, train=False)
    params, state = variables["params"], {"dropblock": variables["dropblock"]}
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    traces = []

    @jax.jit
    def train_step(params, state, opt_state, key):
        traces.append(1)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, **state}, IMAGES, train=True, rngs={"dropout": key}, mutable=["dropblock"]
            )
            return cross_entropy(logits, LABELS), updates

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    losses = []
    for i in range(10):
        params, state, opt_state, loss = train_step(params, state, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert len(traces) == 1 and int(state["dropblock"]["DropBlock_0"]["step"]) == 10
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < np.mean(losses[:3])
    # Evaluation neither needs a key nor moves the step; set_step resets it.
    model.apply({"params": params, **state}, IMAGES, train=False)
    assert int(dj_linen.set_step(state, 0)["dropblock"]["DropBlock_0"]["step"]) == 0


# --- vmap over unbatched examples: whole 2-D blocks -------------------------------------------


def whole_blocks(dropped, block, axes):
    """Whether boolean maps (spatial ``axes``) are unions of whole ``block``-boxes lying inside them.

    The morphological opening of the dropped set by the block is the set itself.
    """
    grid_shape = list(dropped.shape)
    for axis, k in zip(axes, block):
        grid_shape[axis] -= k - 1
    fits = np.ones(grid_shape, bool)
    for offset in np.ndindex(*block):
        window = [slice(None)] * dropped.ndim
        for axis, o in zip(axes, offset):
            window[axis] = slice(o, o + grid_shape[axis])
        fits &= dropped[tuple(window)]
    spatial = [dropped.shape[axis] for axis in axes]
    return np.array_equal(dropped_mask(fits, spatial, block, axes, "valid"), dropped)


XS = jax.random.uniform(jax.random.key(3), (4, 16, 16, 3), minval=0.5, maxval=1.5)
KEYS = jax.random.split(jax.random.key(1), 4)


def check_examples(out, single, channel_axis=-1):
    """Each example equals its own call as a batch of one, and drops whole 4 x 4 squares."""
    axes = (1, 2) if channel_axis == -1 else (2, 3)
    out = np.asarray(out)
    for i in range(out.shape[0]):
        np.testing.assert_array_equal(out[i], single(i))
        dropped = out[i][None] == 0
        assert 0.05 < dropped.mean() < 0.5
        assert whole_blocks(dropped, (4, 4), axes)


@pytest.mark.parametrize("channel_axis", [-1, 1])
def test_jax_vmap_of_dropblock_over_examples_drops_whole_square_blocks(channel_axis):
    xs = XS if channel_axis == -1 else jnp.moveaxis(XS, -1, 1)
    options = dict(channel_axis=channel_axis, spatial_dims=2)
    out = jax.jit(jax.vmap(lambda x, key: dj.dropblock(x, key, 0.25, 4, **options)))(xs, KEYS)
    check_examples(
        out, lambda i: dj.dropblock(xs[i][None], KEYS[i], 0.25, 4, channel_axis=channel_axis)[0], channel_axis
    )
    # Without spatial_dims an (H, W, C) example was read as a batch of H 1-D rows: strips.
    rows = np.asarray(jax.vmap(lambda x, key: dj.dropblock(x, key, 0.25, 4))(XS, KEYS)) == 0
    assert not all(whole_blocks(rows[i][None], (4, 4), (1, 2)) for i in range(4))


def test_nnx_vmap_of_the_layer_over_examples_drops_whole_square_blocks():
    layer = dj_nnx.DropBlock(0.25, 4, spatial_dims=2)
    out = nnx.vmap(lambda layer, x, key: layer(x, rngs=key), in_axes=(None, 0, 0))(layer, XS, KEYS)
    check_examples(out, lambda i: layer(XS[i][None], rngs=KEYS[i])[0])


def test_jax_vmap_of_the_linen_layer_over_examples_drops_whole_square_blocks():
    layer = dj_linen.DropBlock(0.25, 4, spatial_dims=2)
    apply = lambda x, key: layer.apply({}, x, deterministic=False, rng=key)  # noqa: E731
    check_examples(jax.jit(jax.vmap(apply))(XS, KEYS), lambda i: apply(XS[i][None], KEYS[i])[0])


# --- inf and NaN inputs -------------------------------------------------------------------------


def poisoned(x, seed=0):
    """``x`` with inf, -inf and NaN at random positions (a diverging activation)."""
    x = np.array(x)
    kind = np.random.default_rng(seed).choice(4, size=x.shape, p=[0.6, 0.15, 0.1, 0.15])
    x[kind == 1], x[kind == 2], x[kind == 3] = np.inf, -np.inf, np.nan
    return x


@pytest.mark.parametrize("share_channels", [False, True])
@pytest.mark.parametrize("share_batch", [False, True])
def test_inf_and_nan_inputs_stay_where_kept_and_vanish_where_dropped(share_channels, share_batch):
    finite = jax.random.uniform(jax.random.key(2), (2, 12, 12, 8), minval=0.5, maxval=1.5)
    bad = poisoned(finite)
    sharing = dict(share_channels=share_channels, share_batch=share_batch)
    for normalize in ("batch", "sample", "expected", "none"):
        # The mask depends on the key only, so the finite input shows which units are dropped.
        reference, out = (
            np.asarray(dj.dropblock(x, jax.random.key(5), 0.3, 3, normalize=normalize, **sharing))
            for x in (finite, bad)
        )
        dropped = reference == 0
        assert 0.1 < dropped.mean() < 0.6
        np.testing.assert_array_equal(out[dropped], 0.0)
        kept = ~dropped
        np.testing.assert_array_equal(np.isnan(out), np.isnan(bad) & kept)
        assert (np.isinf(bad) & kept).any() and (np.isinf(bad) & dropped).any()
        np.testing.assert_array_equal(
            out[kept & ~np.isnan(bad)], np.where(np.isinf(bad), bad, reference)[kept & ~np.isnan(bad)]
        )
    # Noise: dropped units get the noise whatever x held, kept ones keep their inf or NaN.
    run = lambda x: np.asarray(dj.dropblock(x, jax.random.key(5), 0.3, 3, noise=True, **sharing))  # noqa: E731
    reference, out = run(finite), run(bad)
    dropped = reference != np.asarray(finite)
    np.testing.assert_array_equal(out[dropped], reference[dropped])
    np.testing.assert_array_equal(out[~dropped], bad[~dropped])


# --- bad values from a config -------------------------------------------------------------------

GOOD = dict(drop_prob=0.1, block_size=3, calibrate=False, share_channels=False, share_batch=False, noise=False)
BAD = [
    ("calibrate", "False", TypeError),  # a string from argparse or YAML is truthy
    ("share_channels", 1, TypeError),
    ("share_batch", "yes", TypeError),
    ("noise", None, TypeError),
    ("normalize", None, ValueError),  # a YAML null
    ("seed_region", "same", ValueError),
    ("spatial_dims", 4, ValueError),
    ("drop_prob", "0.1", TypeError),
    ("drop_prob", True, TypeError),
    ("drop_prob", np.bool_(False), TypeError),
    ("drop_prob", 1.5, ValueError),
    ("block_size", 0, ValueError),
]
X = jnp.ones((2, 8, 8, 4))


def functional_call(config):
    return dj.dropblock(X, jax.random.key(0), **config)


def nnx_call(config):
    config = dict(config)
    return dj_nnx.DropBlock(config.pop("drop_prob"), config.pop("block_size"), rngs=nnx.Rngs(dropout=0), **config)(X)


def linen_call(config):
    return dj_linen.DropBlock(**config).apply({}, X, deterministic=False, rngs={"dropout": jax.random.key(0)})


@pytest.mark.parametrize("call", [functional_call, nnx_call, linen_call])
@pytest.mark.parametrize("name, value, error", BAD)
def test_a_bad_value_from_a_config_is_refused_with_its_name(call, name, value, error):
    call(GOOD)
    with pytest.raises(error, match=rf"\b{name}\b"):
        call({**GOOD, name: value})


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: dj_nnx.DropBlock(0.1, 3)(X, rngs=5), TypeError, r"^rngs must .*rngs=5"),  # a seed, not a key
        (lambda: dj_nnx.DropBlock(0.1, 3, rngs=nnx.Rngs(0))(X, deterministic="False"), TypeError, r"deterministic"),
        (
            lambda: nnx.jit(lambda p: dj_nnx.DropBlock(0.1, 3)(X, rngs=jax.random.key(0), drop_prob=p))(
                jnp.array(True)
            ),
            TypeError,
            r"drop_prob",
        ),
        (lambda: dj.dropblock(X.astype(jnp.float8_e4m3fn), jax.random.key(0), 0.1, 3), TypeError, r"x\.dtype"),
        (
            lambda: dj.apply_seeds(X, jnp.ones((2, 6, 6, 4)), 3, normalize="expected", expected_drop=2.0),
            ValueError,
            r"expected_drop=2\.0",
        ),
        (
            lambda: dj.sample_seeds(jax.random.key(0), (2, 4, -1, 8), 0.1, 3),
            ValueError,
            r"^shape must .*shape=\(2, 4, -1, 8\)",
        ),
        (
            lambda: jax.vmap(lambda x: dj.dropblock(x, jax.random.key(0), 0.1, 3, spatial_dims=2))(X[..., 0]),
            ValueError,
            r"spatial_dims=2, got x\.ndim=2",
        ),
    ],
)
def test_bad_values_in_training_code_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
