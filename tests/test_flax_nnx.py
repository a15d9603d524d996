"""dropblock_jax.nnx.DropBlock behaves like nnx.Dropout, and keeps its schedule's step as state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dropblock_jax as dj
from dropblock_jax import schedules
from dropblock_jax.nnx import DropBlock, DropRate, ScheduleStep, set_step

X = jnp.asarray(np.random.default_rng(9).uniform(0.5, 1.5, (4, 12, 12, 8)).astype(np.float32))


def test_eval_is_the_identity_and_train_drops():
    layer = DropBlock(0.2, 3, rngs=nnx.Rngs(dropout=0))
    assert float((layer(X) == 0).mean()) > 0.05
    layer.eval()
    assert layer(X) is X
    layer.train()
    assert float((layer(X) == 0).mean()) > 0.05


def test_deterministic_at_call_time_overrides_the_attribute():
    layer = DropBlock(0.2, 3, deterministic=True, rngs=nnx.Rngs(dropout=0))
    assert layer(X) is X
    assert float((layer(X, deterministic=False) == 0).mean()) > 0.05


def test_nnx_view_reaches_deterministic():
    model = nnx.Sequential(nnx.Linear(8, 8, rngs=nnx.Rngs(0)), DropBlock(0.3, 3, rngs=nnx.Rngs(dropout=1)))
    evaluation = nnx.view(model, deterministic=True)
    np.testing.assert_array_equal(evaluation(X), model.layers[0](X))
    assert model.layers[1].deterministic is False


def test_the_rng_stream_advances_between_calls():
    layer = DropBlock(0.2, 3, rngs=nnx.Rngs(dropout=0))
    first, second = layer(X), layer(X)
    assert not np.array_equal(first == 0, second == 0)


def test_call_time_key_and_drop_prob_override_the_stored_ones():
    layer = DropBlock(0.1, 3, calibrate=True)
    key = jax.random.key(4)
    np.testing.assert_array_equal(layer(X, rngs=key, drop_prob=0.3), dj.dropblock(X, key, 0.3, 3, calibrate=True))
    stream = nnx.Rngs(dropout=3)
    assert layer(X, rngs=stream).shape == X.shape


def test_same_seed_same_masks():
    a, b = (DropBlock(0.2, 3, rngs=nnx.Rngs(dropout=7)) for _ in range(2))
    np.testing.assert_array_equal(a(X), b(X))


def test_schedule_step_advances_in_training_only():
    layer = DropBlock(schedules.ramp(0.3, 5), 3, rngs=nnx.Rngs(dropout=0))
    assert isinstance(layer.step, ScheduleStep)
    np.testing.assert_array_equal(layer(X), X)  # step 0 of the ramp: drop_prob 0
    fractions = [float((layer(X) == 0).mean()) for _ in range(6)]
    assert int(layer.step[...]) == 7
    assert 0 < fractions[0] < fractions[-1]
    layer.eval()
    layer(X)
    assert int(layer.step[...]) == 7


def test_the_step_moves_only_on_calls_that_read_the_schedule():
    layer = DropBlock(schedules.ramp(0.3, 5), 3, rngs=nnx.Rngs(dropout=0))
    layer.step[...] = 3
    layer(X, drop_prob=0.2)  # an explicit rate: the schedule is not read
    assert int(layer.step[...]) == 3
    keyless = DropBlock(schedules.ramp(0.3, 5), 3)
    keyless.step[...] = 3
    with pytest.raises(ValueError, match="no random key|rngs"):
        keyless(X)
    assert int(keyless.step[...]) == 3  # a failed call changes nothing


def test_a_changing_step_never_retraces_a_jitted_train_step():
    traces = []
    layer = DropBlock(schedules.ramp(0.2, 4), 3, calibrate=True, rngs=nnx.Rngs(dropout=0))

    @nnx.jit
    def step(layer, x):
        traces.append(1)
        return layer(x)

    outs = [step(layer, X) for _ in range(6)]
    assert len(traces) == 1
    assert int(layer.step[...]) == 6
    np.testing.assert_array_equal(outs[0], X)
    assert float((outs[5] == 0).mean()) == pytest.approx(0.2, abs=0.05)


def test_optax_schedules_work_as_rates():
    layer = DropBlock(optax.cosine_decay_schedule(0.3, 10), 3, rngs=nnx.Rngs(dropout=0))
    assert float((layer(X) == 0).mean()) > 0.05


def test_state_round_trip_resumes_the_schedule_and_the_stream():
    make = lambda seed: DropBlock(schedules.ramp(0.3, 10), 3, rngs=nnx.Rngs(dropout=seed))  # noqa: E731
    trained = make(0)
    for _ in range(3):
        trained(X)
    restored = make(123)
    nnx.update(restored, nnx.state(trained))
    assert int(restored.step[...]) == 3
    np.testing.assert_array_equal(restored(X), trained(X))


@pytest.mark.slow
def test_orbax_checkpoint_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    make = lambda seed: DropBlock(schedules.ramp(0.3, 10), 3, rngs=nnx.Rngs(dropout=seed))  # noqa: E731
    trained = make(0)
    for _ in range(4):
        trained(X)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "dropblock", nnx.state(trained))
    restored = make(5)
    with ocp.StandardCheckpointer() as checkpointer:
        nnx.update(restored, checkpointer.restore(tmp_path / "dropblock", nnx.state(restored)))
    assert int(restored.step[...]) == 4
    np.testing.assert_array_equal(restored(X), trained(X))


@pytest.mark.slow
def test_a_small_model_trains_under_nnx_jit():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
            self.drop = DropBlock(schedules.ramp(0.2, 20), 3, rngs=rngs)
            self.head = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            return self.head(self.drop(nnx.relu(self.conv(x))).mean(axis=(1, 2)))

    model = Net(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    images = jax.random.normal(jax.random.key(0), (32, 12, 12, 1))
    labels = (images.mean(axis=(1, 2, 3)) > 0).astype(jnp.int32)

    @nnx.jit
    def train_step(model, optimizer, images, labels):
        def loss_fn(model):
            logits = model(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, images, labels)) for _ in range(30)]
    assert int(model.drop.step[...]) == 30
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: DropBlock(0.1, 0), ValueError, r"block_size=0"),
        (lambda: DropBlock(0.1, (3, 3, 3, 3)), ValueError, r"block_size=\(3, 3, 3, 3\)"),
        (lambda: DropBlock(1.5, 3), ValueError, r"drop_prob=1\.5"),
        (lambda: DropBlock(0.1, 3, seed_region="edge"), ValueError, r"seed_region='edge'"),
        (lambda: DropBlock(0.1, 3, normalize="mean"), ValueError, r"normalize='mean'"),
        (lambda: DropBlock(0.1, 3, channel_axis=2), ValueError, r"channel_axis=2"),
        (lambda: DropBlock(0.1, 3, rngs=jax.random.key(0)), TypeError, r"rngs must be"),
        (lambda: DropBlock(0.1, 3, calibrate="False"), TypeError, r"calibrate='False'"),
        (lambda: DropBlock(0.1, 3, share_channels=1), TypeError, r"share_channels=1"),
        (lambda: DropBlock(0.1, 3, noise=None), TypeError, r"noise=None"),
        (lambda: DropBlock(0.1, 3, auto_step="no"), TypeError, r"auto_step='no'"),
        (lambda: DropBlock(0.1, 3, deterministic="False"), TypeError, r"deterministic='False'"),
        (lambda: DropBlock(0.1, 3, normalize=None), ValueError, r"normalize=None"),
        (lambda: DropBlock(0.1, 3, spatial_dims=4), ValueError, r"spatial_dims=4"),
        (lambda: DropBlock(0.1, (3, 3), spatial_dims=3), ValueError, r"block_size=\(3, 3\)"),
        (lambda: DropBlock(True, 3), TypeError, r"drop_prob=True"),
        (lambda: DropBlock("0.1", 3), TypeError, r"drop_prob='0\.1'"),
    ],
)
def test_bad_construction_fails_eagerly(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_training_without_a_key_says_how_to_fix_the_call():
    with pytest.raises(ValueError, match=r"rngs=nnx\.Rngs\(dropout=0\).*model\.eval\(\)"):
        DropBlock(0.1, 3)(X)


def test_missing_deterministic_says_how_to_fix_the_call():
    with pytest.raises(ValueError, match=r"deterministic=True/False"):
        DropBlock(0.1, 3, deterministic=None, rngs=nnx.Rngs(dropout=0))(X)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda layer: layer(X, rngs=5), TypeError, r"^rngs must be .*rngs=5"),
        (lambda layer: layer(X, deterministic="no"), TypeError, r"deterministic='no'"),
        (lambda layer: layer(X, drop_prob=True), TypeError, r"drop_prob=True"),
        (lambda layer: nnx.jit(lambda m, p: m(X, drop_prob=p))(layer, jnp.array(True)), TypeError, r"drop_prob"),
        (lambda layer: layer(X.astype(jnp.float8_e4m3fn)), TypeError, r"x\.dtype=float8_e4m3fn"),
        (lambda layer: layer(X[0, 0]), ValueError, r"x\.ndim=2"),
        (lambda layer: setattr(layer, "drop_prob", 1.5), ValueError, r"drop_prob=1\.5"),
        (lambda layer: setattr(layer, "drop_prob", np.bool_(False)), TypeError, r"drop_prob"),
    ],
)
def test_bad_calls_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(DropBlock(0.1, 3, rngs=nnx.Rngs(dropout=0)))


def test_options_are_plain_attributes():
    layer = DropBlock(0.1, [3, 2], calibrate=True, share_batch=True, normalize="sample", spatial_dims=2)
    assert (layer.block_size, layer.calibrate, layer.share_batch, layer.normalize) == ((3, 2), True, True, "sample")
    assert (layer.share_channels, layer.noise, layer.auto_step, layer.spatial_dims) == (False, False, True, 2)
    layer.share_channels = True  # reaches the next call
    out = layer(X, rngs=jax.random.key(0), drop_prob=0.3)
    assert ((out == 0) == (out[..., :1] == 0)).all() and (out == 0).any()
    # Shown one by one, as nnx.Dropout shows its rate: no record of options in the repr.
    text = repr(layer)
    assert "share_channels=True" in text and "noise=False" in text and "options" not in text
    layer.noise = "yes"  # a bad option set after construction is refused at the next call
    with pytest.raises(TypeError, match=r"noise='yes'"):
        layer(X, rngs=jax.random.key(0), drop_prob=0.3)


def test_the_module_uses_only_public_flax_names():
    import ast
    import inspect

    import dropblock_jax.nnx

    tree = ast.parse(inspect.getsource(dropblock_jax.nnx))
    flax_imports = [
        (node.module, tuple(alias.name for alias in node.names))
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flax")
    ]
    flax_imports += [
        (alias.name, ()) for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    ]
    assert [entry for entry in flax_imports if entry[0].startswith("flax")] == [("flax", ("nnx",))]
    assert "nnx.module." not in inspect.getsource(dropblock_jax.nnx)


def test_a_training_call_draws_one_key_even_at_rate_zero():
    # A: rate 0, then 0.2. B: 0.2 throughout. Each call draws one key, so their second calls agree.
    a, b = (DropBlock(p, 3, rngs=nnx.Rngs(dropout=3)) for p in (0.0, 0.2))
    assert a(X) is X
    b(X)
    a.drop_prob = 0.2
    np.testing.assert_array_equal(a(X), b(X))
    assert int(a.rngs.count[...]) == int(b.rngs.count[...]) == 2
    # No stream at all and a concrete 0: nothing to draw, x itself.
    assert DropBlock(0.0, 3)(X) is X


@pytest.mark.parametrize("calibrate, normalize", [(False, "batch"), (True, "expected"), (False, "none")])
def test_eager_and_jitted_runs_from_one_seed_agree_over_a_ramp(calibrate, normalize):
    make = lambda: DropBlock(  # noqa: E731
        schedules.ramp(0.3, 3), 3, calibrate=calibrate, normalize=normalize, rngs=nnx.Rngs(dropout=11)
    )
    eager, jitted = make(), make()
    step = nnx.jit(lambda layer, x: layer(x))
    for t in range(5):
        expected = eager(X)
        np.testing.assert_array_equal(step(jitted, X), expected, err_msg=f"step {t}")
        assert (float((expected == 0).mean()) == 0.0) == (t == 0)
    assert int(eager.step[...]) == int(jitted.step[...]) == 5


def test_changing_a_constant_rate_never_retraces_and_reads_back_as_given():
    traces = []
    layer = DropBlock(0.1, 3, rngs=nnx.Rngs(dropout=0))
    assert isinstance(layer.rate, DropRate) and not isinstance(layer.rate, nnx.Param)
    assert layer.rate[...].dtype == jnp.float32 and not layer.rate[...].weak_type

    @nnx.jit
    def step(layer, x):
        traces.append(1)
        return layer(x)

    fractions = {}
    for p in (0.1, 0.3, 0.05, 1 / 3, 0.0):
        layer.drop_prob = p
        fractions[p] = float((step(layer, X) == 0).mean())
        assert layer.drop_prob == pytest.approx(p, rel=1e-7)
    assert len(traces) == 1
    assert fractions[0.0] == 0.0 and fractions[0.05] < fractions[0.1] < fractions[0.3]
    layer.drop_prob = 0.1
    assert layer.drop_prob == 0.1 and str(layer.drop_prob) == "0.1"
    assert DropBlock(0.15, 3).drop_prob == 0.15


def test_a_rate_or_a_schedule_may_replace_the_other():
    layer = DropBlock(0.2, 3, rngs=nnx.Rngs(dropout=0))
    schedule = schedules.ramp(0.3, 10)
    layer.drop_prob = schedule
    assert layer.drop_prob is schedule and isinstance(layer.step, ScheduleStep)
    np.testing.assert_array_equal(layer(X), X)  # the ramp's step 0
    assert int(layer.step[...]) == 1
    layer.drop_prob = 0.25
    assert layer.drop_prob == 0.25 and float((layer(X) == 0).mean()) > 0.1
    assert int(layer.step[...]) == 1  # a constant rate has no step to advance


def test_auto_step_false_leaves_the_step_to_set_step():
    model = nnx.Sequential(
        DropBlock(schedules.ramp(0.3, 4), 3, auto_step=False, rngs=nnx.Rngs(dropout=0)),
        DropBlock(schedules.linear(0.0, 0.2, 5), 3, rngs=nnx.Rngs(dropout=1)),
        DropBlock(0.1, 3, rngs=nnx.Rngs(dropout=2)),
    )
    manual, automatic, constant = model.layers
    for _ in range(3):
        model(X)
    assert int(manual.step[...]) == 0 and int(automatic.step[...]) == 3
    set_step(model, 4)
    assert int(manual.step[...]) == int(automatic.step[...]) == 4 and constant.step is None
    # Traced, under nnx.jit, and from a Variable such as an optimizer's step.
    nnx.jit(lambda model, step: set_step(model, step))(model, jnp.uint32(7))
    assert int(manual.step[...]) == 7
    set_step(model, nnx.Variable(jnp.array(2, jnp.uint32)))
    assert int(manual.step[...]) == 2
    set_step(model, 10**12)  # clipped to int32, not an overflow
    assert int(manual.step[...]) == 2**31 - 1 and float(manual.drop_prob(manual.step[...])) == pytest.approx(0.3)
    for bad, shown in ((1.5, "1.5"), (True, "True"), (jnp.arange(2), "Array"), ("3", "'3'"), (None, "None")):
        with pytest.raises(TypeError, match=rf"^step must be one integer, got step={shown}"):
            set_step(model, bad)


def test_one_example_under_nnx_vmap_with_spatial_dims():
    layer = DropBlock(0.3, 3, spatial_dims=2)
    keys = jax.random.split(jax.random.key(0), X.shape[0])
    out = nnx.vmap(lambda layer, x, key: layer(x, rngs=key), in_axes=(None, 0, 0))(layer, X, keys)
    for i in range(X.shape[0]):
        np.testing.assert_array_equal(out[i], layer(X[i : i + 1], rngs=keys[i])[0])


def test_remat_gives_the_gradients_without_it_and_the_schedule_advances_once():
    # nnx.remat recomputes the forward in the backward pass: the same key and step, so the same
    # masks; the step's update is the forward's, made once.
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(8, 8, (3, 3), rngs=rngs)
            self.drop = DropBlock(schedules.ramp(0.5, 10), 3, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.conv(x))

    def kernel_gradients(remat: bool):
        model = Block(nnx.Rngs(params=0, dropout=1))
        forward = nnx.remat(lambda m, x: m(x)) if remat else (lambda m, x: m(x))
        step = nnx.jit(lambda model, x: nnx.grad(lambda m, x: jnp.sum(forward(m, x) ** 2))(model, x))
        x = jax.random.normal(jax.random.key(2), (4, 16, 16, 8))
        gradients = [np.asarray(step(model, x).conv.kernel[...]) for _ in range(4)]
        return gradients, int(model.drop.step[...])

    (plain, plain_step), (rematted, remat_step) = kernel_gradients(False), kernel_gradients(True)
    assert plain_step == remat_step == 4
    assert not np.array_equal(plain[1], plain[3])  # the masks (and the rate) change from step to step
    for expected, got in zip(plain, rematted, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_stacked_layers_read_back_one_rate_per_copy_and_each_gets_the_step():
    stack = nnx.vmap(lambda rngs: DropBlock(0.1, 3, rngs=rngs))(nnx.Rngs(dropout=0).split(3))
    rates = stack.drop_prob
    assert rates.shape == (3,) and rates.dtype == jnp.float32
    np.testing.assert_array_equal(rates, np.float32(0.1))
    stack.drop_prob = 0.3
    np.testing.assert_array_equal(stack.drop_prob, np.float32(0.3))
    scheduled = nnx.vmap(lambda rngs: DropBlock(schedules.ramp(0.3, 10), 3, rngs=rngs))(nnx.Rngs(dropout=0).split(3))
    set_step(scheduled, 7)
    assert scheduled.step[...].shape == (3,) and scheduled.step[...].dtype == jnp.int32
    np.testing.assert_array_equal(scheduled.step[...], 7)


def test_a_rate_given_as_a_fraction_is_its_float():
    from fractions import Fraction

    layer = DropBlock(Fraction(1, 10), 3, rngs=nnx.Rngs(dropout=0))
    assert layer.drop_prob == 0.1
    reference = DropBlock(0.1, 3, rngs=nnx.Rngs(dropout=0))
    np.testing.assert_array_equal(layer(X), reference(X))
    np.testing.assert_array_equal(layer(X, drop_prob=Fraction(3, 10)), reference(X, drop_prob=0.3))


def test_with_optax_multisteps_the_schedule_follows_the_real_updates():
    # MultiSteps counts every call of optimizer.update in optimizer.step (micro-steps); its own
    # gradient_step counts the real updates, the step the docs say to pass to set_step.
    every = 4
    model = nnx.Sequential(
        nnx.Conv(8, 8, (3, 3), rngs=nnx.Rngs(0)), DropBlock(schedules.ramp(0.3, 10), 3, auto_step=False)
    )
    optimizer = nnx.Optimizer(model, optax.MultiSteps(optax.sgd(0.1), every_k_schedule=every), wrt=nnx.Param)
    used = []

    @nnx.jit
    def train_step(model, optimizer, key):
        set_step(model, optimizer.opt_state.gradient_step)
        grads = nnx.grad(lambda m: jnp.sum(m.layers[1](m.layers[0](X), rngs=key) ** 2))(model)
        optimizer.update(model, grads)
        return model.layers[1].step[...]

    for key in jax.random.split(jax.random.key(0), 3 * every):
        used.append(int(train_step(model, optimizer, key)))
    assert used == [0] * every + [1] * every + [2] * every
    assert int(optimizer.step[...]) == 3 * every and int(optimizer.opt_state.gradient_step[...]) == 3
