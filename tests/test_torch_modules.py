"""dropblock_torch layers, schedules and LinearScheduler; torch.compile and torch.export."""

import numpy as np
import pytest
import torch
from torch import nn

import dropblock_torch as dt
from dropblock_jax import schedules as jax_schedules
from dropblock_torch import schedules

X = torch.rand(4, 8, 12, 12, generator=torch.Generator().manual_seed(9)) + 0.5


@pytest.fixture(autouse=True)
def seeded_global_rng():
    """Layers draw from torch's global generator: seed it per test, and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.mark.parametrize(
    "layer_type, shape",
    [(dt.DropBlock1d, (2, 3, 20)), (dt.DropBlock2d, (2, 3, 12, 12)), (dt.DropBlock3d, (2, 3, 6, 6, 6))],
)
def test_layers_drop_in_training_and_are_the_identity_in_eval(layer_type, shape):
    layer = layer_type(0.3, 3)
    x = torch.rand(shape) + 0.5
    assert (layer(x) == 0).float().mean() > 0.05
    layer.eval()
    assert layer(x) is x


def test_the_layer_is_the_functional():
    layer = dt.DropBlock2d(0.2, (3, 5), seed_region="full", share_channels=True, normalize="sample")
    torch.manual_seed(0)
    out = layer(X)
    torch.manual_seed(0)
    expected = dt.drop_block(X, torch.tensor(0.2), (3, 5), seed_region="full", share_channels=True, normalize="sample")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_extra_repr_names_the_options():
    text = repr(dt.DropBlock2d(0.1, 7, calibrate=True))
    assert "drop_prob=0.1" in text and "block_size=(7, 7)" in text and "calibrate=True" in text
    assert "schedule" in repr(dt.DropBlock2d(schedules.ramp(0.1, 10), 7))


def test_a_scheduled_layer_keeps_its_step_in_the_state_dict_and_resumes():
    layer = dt.DropBlock2d(schedules.ramp(0.3, 5), 3)
    torch.testing.assert_close(layer(X), X, rtol=0, atol=0)  # step 0 of the ramp: drop_prob 0
    fractions = [float((layer(X) == 0).float().mean()) for _ in range(5)]
    assert int(layer.step) == 6 and 0 < fractions[0] < fractions[-1]
    layer.eval()
    layer(X)
    assert int(layer.step) == 6
    state = layer.state_dict()
    assert set(state) == {"step"}
    resumed = dt.DropBlock2d(schedules.ramp(0.3, 5), 3)
    resumed.load_state_dict(state)
    assert resumed.drop_prob == pytest.approx(layer.drop_prob) == pytest.approx(0.3)


def test_a_constant_layer_adds_nothing_to_the_state_dict():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), dt.DropBlock2d(0.1, 3))
    assert set(model.state_dict()) == {"0.weight", "0.bias"}


def test_drop_prob_can_be_set_and_is_validated():
    layer = dt.DropBlock2d(0.1, 3)
    layer.drop_prob = 0.25
    assert layer.drop_prob == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"drop_prob=1\.5"):
        layer.drop_prob = 1.5
    with pytest.raises(AttributeError, match="schedule"):
        dt.DropBlock2d(schedules.ramp(0.1, 3), 3).drop_prob = 0.2


@pytest.mark.parametrize("start, stop, steps", [(0.0, 0.1, 5), (0.3, 0.05, 7), (0.1, 0.4, 1), (0.0, 0.25, 5000)])
def test_schedules_equal_linspace_and_the_jax_schedules(start, stop, steps):
    torch_schedule, jax_schedule = schedules.linear(start, stop, steps), jax_schedules.linear(start, stop, steps)
    reference = np.linspace(start, stop, steps)
    for t in sorted({0, 1, steps // 2, steps - 1, steps, steps + 7}):
        expected = np.float32(reference[min(t, steps - 1)])
        # torch works in float64: exactly linspace rounded to float32; JAX in float32: within 1 ulp.
        assert np.float32(torch_schedule(torch.tensor(t))) == np.float32(torch_schedule(t)) == expected
        assert abs(np.float32(jax_schedule(t)) - expected) <= np.spacing(expected)


def test_linear_scheduler_ramps_like_the_dropblock_package():
    dropblock = pytest.importorskip("dropblock")
    ours = dt.LinearScheduler(dt.DropBlock2d(0.0, 3), 0.0, 0.25, 6)
    theirs = dropblock.LinearScheduler(dropblock.DropBlock2D(0.0, 3), 0.0, 0.25, 6)
    for _ in range(9):
        ours.step()
        theirs.step()
        assert ours.dropblock.drop_prob == pytest.approx(theirs.dropblock.drop_prob, abs=1e-7)
    assert int(ours.state_dict()["i"]) == 9
    assert ours(X).shape == X.shape


def test_bad_construction_fails_eagerly():
    with pytest.raises(ValueError, match=r"block_size=0"):
        dt.DropBlock2d(0.1, 0)
    with pytest.raises(ValueError, match=r"block_size=\(3, 3, 3\)"):
        dt.DropBlock2d(0.1, (3, 3, 3))
    with pytest.raises(ValueError, match=r"drop_prob=-0\.1"):
        dt.DropBlock2d(-0.1, 3)
    with pytest.raises(ValueError, match=r"normalize='mean'"):
        dt.DropBlock2d(0.1, 3, normalize="mean")
    with pytest.raises(ValueError, match=r"nr_steps=0"):
        dt.LinearScheduler(dt.DropBlock2d(0.0, 3), 0.0, 0.1, 0)


@pytest.mark.parametrize("returned", ["0.1", None, True])
def test_a_schedule_that_returns_no_rate_is_named(returned):
    layer = dt.DropBlock2d(lambda step: returned, 3)
    with pytest.raises(TypeError, match=r"schedule must return drop_prob.*got " + repr(returned).replace(".", r"\.")):
        layer(torch.ones(2, 3, 8, 8))


@pytest.mark.parametrize("training", [True, False])
def test_the_wrong_rank_names_x_spatial_dims_and_the_shape(training):
    layer = dt.DropBlock2d(0.1, 3).train(training)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions.*or 3.*spatial_dims=2.*x\.ndim=2"):
        layer(torch.ones(3, 8))
    with pytest.raises(ValueError, match=r"x\.ndim=5 with shape \(1, 2, 3, 8, 8\)"):
        layer(torch.ones(1, 2, 3, 8, 8))


@pytest.mark.slow
def test_compiled_scheduled_model_has_no_graph_breaks_or_recompiles():
    import torch._dynamo

    torch._dynamo.reset()
    # config.patch, not monkeypatch: monkeypatch's undo deletes the attribute and hides the option.
    with torch._dynamo.config.patch(error_on_recompile=True):
        _train_compiled_without_recompiles()
    torch._dynamo.reset()


def _train_compiled_without_recompiles():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), dt.DropBlock2d(schedules.ramp(0.3, 4), 3, calibrate=True))
    # fullgraph=True raises on any graph break; aot_eager traces exactly as inductor would see it.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.rand(4, 3, 14, 14)
    fractions = [float((compiled(x) == 0).float().mean()) for _ in range(6)]
    assert int(model[1].step) == 6
    assert fractions[0] < 0.05 < fractions[-1]  # relu-free conv outputs are rarely exactly 0
    # A changing rate through the old API's setter is a buffer write: no recompile either.
    layer = dt.DropBlock2d(0.1, 3)
    compiled_layer = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for rate in (0.1, 0.2, 0.3):
        layer.drop_prob = rate
        compiled_layer(x)


def test_torch_export_in_eval_mode():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), dt.DropBlock2d(schedules.ramp(0.1, 10), 3)).eval()
    exported = torch.export.export(model, (torch.rand(2, 3, 12, 12),))
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(exported.module()(x), model(x))


def test_options_are_plain_attributes_as_on_nn_dropout():
    layer = dt.DropBlock2d(0.1, 5, seed_region="full", noise=True, share_batch=True)
    assert (layer.seed_region, layer.noise, layer.share_batch, layer.calibrate, layer.inplace) == (
        "full",
        True,
        True,
        False,
        False,
    )
    assert "options" not in repr(layer) and "noise=True" in repr(layer)


@pytest.mark.parametrize("schedule", [False, True])
def test_torch_fx_records_the_layer_as_one_call_that_follows_its_mode(schedule):
    # Traced through before, the layer failed on the tracer's proxy (x must be a torch.Tensor).
    rate = dt.schedules.ramp(0.3, 1) if schedule else 0.3
    model = nn.Sequential(nn.Conv2d(3, 8, 3), dt.DropBlock2d(rate, 3), nn.Flatten())
    traced = torch.fx.symbolic_trace(model)
    assert [node.target for node in traced.graph.nodes if node.op == "call_module"] == ["0", "1", "2"]
    x = torch.randn(2, 3, 12, 12)
    for mode in (True, False):
        model.train(mode)
        if schedule:
            model[1].step.fill_(1)
        torch.manual_seed(0)
        expected = model(x)
        traced.train(mode)
        torch.manual_seed(0)
        assert torch.equal(traced(x), expected) and (expected == 0).any() == mode
