"""dropblock_jax.schedules against numpy.linspace and the dropblock 0.3.0 LinearScheduler."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dropblock_jax import schedules

LINEAR_CASES = [(0.0, 0.1, 5), (0.0, 0.25, 5000), (0.3, 0.05, 7), (0.2, 0.2, 3), (0.1, 0.4, 1), (0.0, 1.0, 2)]


@pytest.mark.parametrize("start, stop, steps", LINEAR_CASES)
def test_linear_is_linspace_then_constant(start, stop, steps):
    schedule = jax.jit(schedules.linear(start, stop, steps))
    reference = np.linspace(start, stop, steps)
    for t in sorted({0, 1, 2, steps // 2, steps - 2, steps - 1, steps, steps + 10}):
        if t >= 0:
            assert float(schedule(t)) == pytest.approx(reference[min(t, steps - 1)], abs=1e-7)


def test_linear_matches_the_dropblock_package_scheduler():
    dropblock = pytest.importorskip("dropblock")
    for start, stop, steps in LINEAR_CASES:
        if steps > 100:
            continue
        scheduler = dropblock.LinearScheduler(dropblock.DropBlock2D(0.0, 3), start, stop, steps)
        schedule = schedules.linear(start, stop, steps)
        for t in range(steps + 3):
            scheduler.step()  # after t + 1 calls the package gives linear(...)(t)
            assert float(schedule(t)) == pytest.approx(scheduler.dropblock.drop_prob, abs=1e-7)


def test_ramp_is_the_authors_and_stays():
    # The authors' p * min(t, T) / T: 0 at step 0, p from step T on.
    schedule = schedules.ramp(0.1, 10)
    values = np.array([float(schedule(t)) for t in range(20)])
    np.testing.assert_allclose(values[:11], np.linspace(0, 0.1, 11), atol=1e-8)
    np.testing.assert_allclose(values[11:], 0.1, atol=1e-8)
    assert float(schedules.ramp(0.1, 100)(50)) == pytest.approx(0.05, abs=1e-8)
    assert float(schedules.ramp(0.3, 1)(0)) == 0.0 and float(schedules.ramp(0.3, 1)(1)) == pytest.approx(0.3)


def test_schedules_pickle_compare_and_hash_by_value():
    import copy
    import pickle

    for schedule in (schedules.ramp(0.1, 100), schedules.linear(0.0, 0.2, 7)):
        for restored in (pickle.loads(pickle.dumps(schedule)), copy.deepcopy(schedule)):
            assert restored == schedule and hash(restored) == hash(schedule)
            assert float(restored(3)) == float(schedule(3))
    assert schedules.ramp(0.1, 100) != schedules.ramp(0.1, 101)


def test_float_nr_steps_and_traced_steps_work():
    schedule = schedules.linear(0.0, 0.1, 5.0)
    steps = jnp.arange(8)
    np.testing.assert_allclose(
        jax.vmap(schedule)(steps), np.linspace(0, 0.1, 5)[np.minimum(np.arange(8), 4)], atol=1e-7
    )


def test_negative_steps_count_as_zero():
    assert float(schedules.linear(0.05, 0.1, 5)(-3)) == pytest.approx(0.05)


def test_any_optax_schedule_is_a_drop_prob_schedule():
    import dropblock_jax as dj

    schedule = optax.linear_schedule(0.0, 0.2, 10)
    x = jnp.ones((2, 8, 8, 2))
    out = jax.jit(lambda step: dj.dropblock(x, jax.random.key(0), schedule(step), 3))(10)
    assert 0.0 < float((out == 0).mean()) < 0.4


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: schedules.linear(0.0, 1.5, 10), r"stop_value=1\.5"),
        (lambda: schedules.linear(-0.1, 0.1, 10), r"start_value=-0\.1"),
        (lambda: schedules.linear(0.0, 0.1, 0), r"nr_steps=0"),
        (lambda: schedules.linear(0.0, 0.1, 2.5), r"nr_steps=2\.5"),
        (lambda: schedules.ramp(2.0, 10), r"drop_prob=2\.0"),
        (lambda: schedules.ramp(0.1, -5), r"total_steps=-5"),
    ],
)
def test_bad_hyperparameters_fail_when_the_schedule_is_built(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_both_flax_set_steps_clip_numpy_integers_alike():
    from dropblock_jax import linen, nnx

    big = np.int64(10**12)
    variables = linen.set_step({"dropblock": {"layer": {"step": jnp.int32(0)}}}, big)
    layer = nnx.DropBlock(schedules.ramp(0.1, 10), 3)
    nnx.set_step(layer, big)
    assert int(variables["dropblock"]["layer"]["step"]) == int(layer.step[...]) == 2**31 - 1
    for bad, shown in ((0.5, r"0\.5"), ("3", "'3'"), (None, "None"), (np.float32(2), r"np\.float32\(2\.0\)")):
        with pytest.raises(TypeError, match=rf"^step must be one integer, got step={shown}\.$"):
            schedules.step_value(bad)
