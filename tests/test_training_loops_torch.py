"""The torch twin inside real training code: compiled, exported, deferred, pickled, accumulated, resumed.

Each test is a scenario a training script runs into; together they are the torch half of
DESIGN.md section 7. The newest-torch CI environment runs this module too, with the real
torchvision and timm ResNets (the tests that need them skip where they are not installed).
"""

import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from bit_equality import same_bits
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

import dropblock_torch as dt
from dropblock_torch import compat, schedules


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def union_of_blocks(dropped: np.ndarray, block: tuple[int, ...]) -> bool:
    """Whether a boolean map is exactly a union of whole ``block``-sized boxes inside it."""
    whole = sliding_window_view(dropped, block).all(axis=tuple(range(-len(block), 0)))
    covered = np.zeros_like(dropped)
    for start in zip(*np.nonzero(whole)):
        covered[tuple(slice(i, i + k) for i, k in zip(start, block))] = True
    return bool((covered == dropped).all())


def small_resnet(drop_layer) -> nn.Module:
    """ResNet-18 of the examples (width 4) with DropBlock at the paper's places."""
    from examples.resnet_cifar10_torch import ResNet18

    return ResNet18(3, 10, 4, lambda stage: (drop_layer, True) if stage >= 3 else (nn.Identity, False))


def train(model, batches, optimizer, compiled=None, accumulate=1, after_step=None):
    """Plain SGD training: ``accumulate`` micro-batches per optimizer step; returns the losses."""
    run = model if compiled is None else compiled
    losses = []
    for index, (x, y) in enumerate(batches):
        loss = nn.functional.cross_entropy(run(x), y) / accumulate
        loss.backward()
        losses.append(float(loss.detach()))
        if (index + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
            if after_step is not None:
                after_step((index + 1) // accumulate)
    return losses


def batches(sizes, shape=(3, 32, 32), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, *shape, generator=generator), torch.randint(0, 10, (n,), generator=generator)) for n in sizes
    ]


# --- torch.compile ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_resnet_trains_through_a_smaller_last_batch():
    torch.manual_seed(0)
    model = small_resnet(lambda: dt.DropBlock2d(schedules.ramp(0.1, 4), 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    compiled = torch.compile(model, backend="aot_eager")
    losses = train(model, batches([8, 8, 5, 3]), optimizer, compiled)
    assert np.isfinite(losses).all()
    steps = {int(m.step) for m in model.modules() if isinstance(m, dt.DropBlock2d)}
    assert steps == {4}  # every layer advanced once per training call, compiled or not


@pytest.mark.slow
@pytest.mark.parametrize("share_channels", [False, True])
def test_inductor_compiles_the_paper_block_with_changing_batch_and_map_sizes(share_channels):
    # Per-channel block 7 after a stage's conv-BN, on a skip connection too, as the paper places it.
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        dt.DropBlock2d(schedules.ramp(0.1, 3), 7, share_channels=share_channels),
        nn.ReLU(),
    )
    compiled = torch.compile(model)
    for n, size in ((6, 16), (6, 16), (4, 16), (6, 8)):
        x = torch.randn(n, 8, size, size, requires_grad=True)
        out = compiled(x)
        out.sum().backward()
        assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert int(model[2].step) == 4


def test_the_layer_compiles_fullgraph_with_changing_batch_and_map_sizes_and_the_global_generator():
    layer = dt.DropBlock2d(0.3, 3)
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True, fullgraph=True)
    for n, size in ((8, 16), (8, 16), (5, 16), (1, 16), (8, 20), (3, 20)):
        out = compiled(torch.ones(n, 4, size, size))
        assert out.shape == (n, 4, size, size) and 0.1 < float((out == 0).float().mean()) < 0.5


def test_fullgraph_with_a_changing_float_rate_has_no_graph_break():
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    function = torch.compile(lambda x, p: dt.drop_block(x, p, 3), fullgraph=True, backend=counter)
    x = torch.ones(4, 4, 16, 16)
    fractions = [float((function(x, p) == 0).float().mean()) for p in (0.1, 0.5, 0.2, 0.3)]
    # fullgraph: no graph break. Dynamo specialises a Python float (as for F.dropout), so each new
    # value may compile once more: the README says to pass a tensor, tested below.
    assert 1 <= counter.frame_count <= 5  # at most one per value
    assert fractions[1] > fractions[3] > fractions[2] > fractions[0] > 0
    assert (function(x, 1.0) == 0).all() and torch.equal(function(x, 0.0), x)
    with pytest.raises(Exception, match=r"drop_prob must be in \[0, 1\]"):
        function(x, 1.5)


def test_a_tensor_rate_never_recompiles():
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    function = torch.compile(lambda x, p: dt.drop_block(x, p, 3), fullgraph=True, backend=counter)
    x = torch.ones(4, 4, 16, 16)
    for p in (0.0, 0.1, 0.5, 1.0):
        function(x, torch.tensor(p))
    assert counter.frame_count == 1


@pytest.mark.parametrize("share_channels", [False, True])
def test_torch_export_in_train_mode_with_a_dynamic_batch(share_channels):
    layer = dt.DropBlock2d(schedules.ramp(0.3, 2), 3, share_channels=share_channels)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer).train()
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (torch.randn(4, 3, 16, 16),), dynamic_shapes=({0: batch},))
    module = exported.module()
    for n in (7, 2):
        out = module(torch.ones(n, 3, 16, 16))
        assert out.shape == (n, 8, 16, 16)
    assert (module(torch.ones(7, 3, 16, 16)) == 0).any()  # the ramp has risen: the export drops


# --- construction: meta device, inference mode, dtype moves -------------------------------------------


def test_deferred_init_on_the_meta_device_then_a_strict_load():
    def build():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), dt.DropBlock2d(0.1, 3), dt.DropBlock2d(schedules.ramp(0.2, 10), 3, share_channels=True)
        )

    trained = build()
    for _ in range(4):
        trained(torch.randn(2, 3, 12, 12))
    with torch.device("meta"):
        model = build()
    model.to_empty(device="cpu")
    assert model[1].drop_prob == 0.1 and float(model[1].rate) == np.float32(0.1)
    model.load_state_dict(trained.state_dict(), strict=True)
    assert int(model[2].step) == 4
    after_conv = model[0](torch.ones(8, 3, 20, 20))
    assert (after_conv != 0).all()
    # It drops: about 10% of the units (conv outputs of a constant input are never exactly 0).
    assert 0.03 < float((model[1](after_conv) == 0).float().mean()) < 0.2


@pytest.mark.parametrize("rate", [0.2, schedules.ramp(0.2, 1)])
def test_a_meta_model_loaded_with_assign_moves_and_drops(rate):
    # load_state_dict(assign=True) leaves the rate buffer (not in state_dict) on the meta device,
    # from which .to("cpu") could not copy, where BatchNorm goes through the same steps.
    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3), dt.DropBlock2d(rate, 3))

    trained = build()
    with torch.device("meta"):
        model = build()
    model.load_state_dict(trained.state_dict(), assign=True)
    model.to("cpu")
    assert all(not t.is_meta for t in model.buffers())
    if callable(rate):
        dt.set_step(model, 1)
    assert model[1].drop_prob == pytest.approx(0.2)
    after_conv = model[0](torch.ones(8, 3, 20, 20))
    assert 0.1 < float((model[1](after_conv) == 0).float().mean()) < 0.3


def test_to_empty_starts_a_schedule_at_step_0(monkeypatch):
    # to_empty() leaves memory as it finds it: the step read whatever was there (a step of
    # 94270688236704 reads as the end of the ramp). Here that memory is made to hold 77.
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda tensor, **options: empty_like(tensor, **options).fill_(77))
    with torch.device("meta"):
        layer = dt.DropBlock2d(schedules.ramp(0.2, 100), 3)
    layer.to_empty(device="cpu")
    assert int(layer.step) == 0 and layer.drop_prob == 0.0


def test_reset_parameters_starts_a_materialised_schedule_over():
    with torch.device("meta"):
        layer = dt.DropBlock2d(schedules.ramp(0.2, 10), 3)
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert int(layer.step) == 0 and layer.drop_prob == 0.0


def test_drop_prob_reads_back_as_given_and_survives_dtype_moves():
    layer = dt.DropBlock2d(0.1, 3)
    assert layer.drop_prob == 0.1
    layer = dt.DropBlock2d(0.3, 3).to(torch.bfloat16)
    assert layer.drop_prob == 0.3 and layer.rate.dtype == torch.float32 and float(layer.rate) == np.float32(0.3)
    layer.half().double()
    assert float(layer.rate) == np.float32(0.3)


@pytest.mark.parametrize("drop_prob", [0.2, schedules.ramp(0.2, 3)])
def test_a_layer_built_under_inference_mode_then_trains(drop_prob):
    with torch.inference_mode():
        model = nn.Sequential(nn.Conv2d(3, 4, 3), dt.DropBlock2d(drop_prob, 3))
    model = copy.deepcopy(model)  # parameters made under inference mode must be copied to train anyway
    x = torch.randn(4, 3, 12, 12)
    for _ in range(3):
        model(x).sum().backward()
    if callable(drop_prob):
        assert int(model[1].step) == 3
    else:
        model[1].drop_prob = 0.1
        assert model[1].drop_prob == 0.1


# --- pickling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [schedules.ramp(0.2, 10), schedules.linear(0.0, 0.3, 7)])
def test_models_holding_a_schedule_pickle_deepcopy_and_torch_save(schedule):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), dt.DropBlock2d(schedule, 3))
    for _ in range(5):
        model(torch.randn(2, 3, 12, 12))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model), torch.load(buffer, weights_only=False)]
    x = torch.randn(2, 3, 12, 12)
    for twin in copies:
        assert int(twin[1].step) == 5 and twin[1].schedule == schedule
        torch.manual_seed(1)
        out = twin(x)
        dt.set_step(model, 5)
        torch.manual_seed(1)
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)


# --- schedules and the optimizer's step -------------------------------------------------------------


def test_gradient_accumulation_follows_the_optimizer_step_with_set_step():
    torch.manual_seed(0)
    ramp = schedules.ramp(0.2, 6)
    model = small_resnet(lambda: dt.DropBlock2d(ramp, 3, auto_step=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    layers = [m for m in model.modules() if isinstance(m, dt.DropBlock2d)]
    seen = []

    def after_step(step):
        dt.set_step(model, step)
        seen.append([layer.drop_prob for layer in layers])

    train(model, batches([4] * 12, shape=(3, 16, 16)), optimizer, accumulate=4, after_step=after_step)
    # 12 micro-batches, 4 per optimizer step: 3 steps, and the ramp read steps 1, 2, 3.
    assert [int(layer.step) for layer in layers] == [3] * len(layers)
    np.testing.assert_allclose(seen, [[0.2 * t / 6] * len(layers) for t in (1, 2, 3)], rtol=1e-6)


def test_set_step_takes_a_tensor_and_leaves_constant_layers_alone():
    model = nn.Sequential(dt.DropBlock2d(0.1, 3), dt.DropBlock2d(schedules.ramp(0.1, 10), 3))
    dt.set_step(model, torch.tensor(5))
    assert model[0].drop_prob == 0.1 and int(model[1].step) == 5 and model[1].drop_prob == pytest.approx(0.05)
    dt.set_step(model, np.int64(6))
    assert int(model[1].step) == 6
    with pytest.raises(TypeError, match="step must be an int"):
        dt.set_step(model, 2.5)
    with pytest.raises(TypeError, match="step must be an int"):
        dt.set_step(model, torch.tensor(7.9))
    with pytest.raises(ValueError, match=r"step=-5"):
        dt.set_step(model, -5)
    with pytest.raises(ValueError, match=r"step=tensor\(-5\)"):  # a CPU tensor is read back, as an int
        dt.set_step(model, torch.tensor(-5))
    assert int(model[1].step) == 6


def test_auto_step_false_never_advances_by_itself():
    layer = dt.DropBlock2d(schedules.ramp(0.1, 10), 3, auto_step=False)
    for _ in range(3):
        layer(torch.ones(2, 2, 8, 8))
    assert int(layer.step) == 0 and "auto_step=False" in repr(layer)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("rate", ["fixed", "schedule"])
def test_activation_checkpointing_recomputes_the_same_masks_and_the_schedule_advances_once(reentrant, rate):
    # torch.utils.checkpoint runs the forward again in the backward pass (with the random state of
    # the first run): the recomputed masks must be the first run's, at the first run's rate, and a
    # schedule must not advance twice. A ramp from 0: the first step's layer is the identity.
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    make = lambda: dt.DropBlock2d(schedules.ramp(0.5, 10) if rate == "schedule" else 0.2, 5)  # noqa: E731
    plain, recomputed = make(), make()
    x = torch.randn(4, 16, 28, 28)

    def weight_gradient(loss: torch.Tensor) -> torch.Tensor:
        conv.weight.grad = None
        loss.backward()
        return conv.weight.grad.clone()

    for iteration in range(4):
        torch.manual_seed(iteration)
        expected = weight_gradient(plain(conv(x)).square().sum())
        torch.manual_seed(iteration)
        inputs = x.clone().requires_grad_(reentrant)  # reentrant checkpoints need an input that requires grad
        run = lambda x: recomputed(conv(x)).square().sum()  # noqa: E731
        assert torch.equal(weight_gradient(checkpoint(run, inputs, use_reentrant=reentrant)), expected), iteration
    if rate == "schedule":
        assert int(plain.step) == int(recomputed.step) == 4


def test_linear_scheduler_resumes_its_rate_from_a_checkpoint():
    def build():
        return nn.Sequential(nn.Conv2d(3, 3, 1), dt.LinearScheduler(dt.DropBlock2d(0.0, 3), 0.0, 0.25, 6))

    model = build()
    for _ in range(3):
        model[1].step()
    resumed = build()
    resumed.load_state_dict(model.state_dict(), strict=True)
    assert resumed[1].dropblock.drop_prob == model[1].dropblock.drop_prob == np.linspace(0.0, 0.25, 6)[2]
    resumed.train()
    assert (resumed[1](torch.ones(4, 3, 16, 16)) == 0).any()  # it drops right away, not after the next step()


def test_linear_scheduler_drives_the_0_3_0_layer_and_refuses_what_it_cannot_drive():
    scheduler = dt.LinearScheduler(compat.DropBlock2D(0.0, 3), 0.0, 0.2, 5)
    scheduler.step()
    scheduler.step()
    assert scheduler.dropblock.drop_prob == np.linspace(0.0, 0.2, 5)[1]
    with pytest.raises(ValueError, match="follows a schedule"):
        dt.LinearScheduler(dt.DropBlock2d(schedules.ramp(0.1, 5), 3), 0.0, 0.1, 5)
    with pytest.raises(TypeError, match="settable drop_prob, got Dropout"):
        dt.LinearScheduler(nn.Dropout(0.1), 0.0, 0.1, 5)


# --- vmap over unbatched examples ---------------------------------------------------------------------


def test_vmap_over_unbatched_examples_drops_whole_2d_blocks():
    x = torch.ones(6, 4, 16, 16)

    def per_example(example):
        return dt.drop_block(example, 0.2, 5, spatial_dims=2)

    out = torch.func.vmap(per_example, randomness="different")(x)
    dropped = (out == 0).numpy()
    assert dropped.any()
    for example in dropped:
        for channel in example:
            assert union_of_blocks(channel, (5, 5))
    # Examples differ (randomness="different"), and an unbatched call is a batch of one.
    assert not (dropped[0] == dropped[1]).all()


def test_the_2d_layer_takes_one_unbatched_example_as_nn_dropout2d_does():
    torch.manual_seed(3)
    out = dt.DropBlock2d(0.2, 5)(torch.ones(4, 16, 16))
    assert out.shape == (4, 16, 16)
    for channel in (out == 0).numpy():
        assert union_of_blocks(channel, (5, 5))


def test_without_spatial_dims_an_unbatched_2d_example_is_refused_by_the_2d_layer_only_if_rank_is_wrong():
    with pytest.raises(ValueError, match=r"x must have 4 dimensions.*spatial_dims=2"):
        dt.drop_block(torch.ones(16, 16), 0.1, 3, spatial_dims=2)
    # Without spatial_dims, rank 3 is a batch of 1-D maps, as it always was.
    assert dt.drop_block(torch.ones(2, 4, 16), 0.1, 3).shape == (2, 4, 16)


# --- values in x: inf and NaN -------------------------------------------------------------------------


SHARING = [dict(), dict(share_channels=True), dict(share_batch=True), dict(share_channels=True, share_batch=True)]


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("normalize", ["batch", "sample", "expected", "none"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_inf_and_nan_stay_where_kept_and_become_zero_where_dropped(sharing, normalize, value):
    x = torch.full((3, 4, 12, 12), value)
    x[:, :, ::2] = 2.0
    out = dt.drop_block(x, 0.3, 3, normalize=normalize, generator=torch.Generator().manual_seed(0), **sharing)
    dropped = out == 0
    assert dropped.any() and not dropped.all()
    assert torch.equal(torch.isnan(out), torch.isnan(x) & ~dropped)
    assert torch.equal(torch.isinf(out), torch.isinf(x) & ~dropped)
    everything = dt.drop_block(x, 1.0, 3, normalize=normalize, **sharing)
    assert (everything == 0).all()


# --- the rate: NaN and infinite tensors, and what seed_region="full" does near the map size ---------

NON_FINITE_RATES = (float("nan"), float("inf"), float("-inf"))


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (2, 64, 32, 32)])  # the second uses the sparse sampler
@pytest.mark.parametrize(
    "options",
    [
        dict(normalize="batch"),
        dict(normalize="expected"),
        dict(normalize="none"),
        dict(normalize="sample", share_channels=True),
        dict(noise=True),
    ],
)
def test_a_nan_or_infinite_rate_tensor_gives_an_all_nan_output(shape, options):
    # Clipped, +inf would drop everything and -inf nothing, silently: a broken schedule is loud instead.
    for rate in NON_FINITE_RATES:
        out = dt.drop_block(torch.ones(shape), torch.tensor(rate), 3, **options)
        assert torch.isnan(out).all(), rate


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
@pytest.mark.parametrize("options", [dict(normalize="batch"), dict(normalize="none", calibrate=True), dict(noise=True)])
def test_a_nan_or_infinite_rate_tensor_gives_an_all_nan_output_when_compiled(backend, options):
    # Inductor folds a product by zero away: a guard written as drop_prob * 0 let a NaN rate
    # drop nothing and an infinite one everything, silently.
    step = torch.compile(lambda x, rate: dt.drop_block(x, rate, 3, **options), backend=backend, fullgraph=True)
    x = torch.ones(2, 64, 32, 32)
    for rate in NON_FINITE_RATES:
        assert torch.isnan(step(x, torch.tensor(rate))).all(), rate
    out = step(x, torch.tensor(0.2))  # the same program with a finite rate: finite, neither x nor all dropped
    assert torch.isfinite(out).all() and (out != x).any() and (out != 0).any()


def test_full_seed_region_over_drops_near_the_map_size_and_calibrate_fixes_it():
    gamma = dt.seed_rate((7, 7), 0.1, 7, seed_region="full")
    assert dt.expected_drop_fraction((7, 7), 7, gamma, seed_region="full") > 0.9
    out = dt.drop_block(
        torch.ones(512, 1, 7, 7), 0.1, 7, seed_region="full", generator=torch.Generator().manual_seed(0)
    )
    assert float((out == 0).float().mean()) > 0.85
    calibrated = dt.drop_block(
        torch.ones(4096, 1, 7, 7),
        0.1,
        7,
        seed_region="full",
        calibrate=True,
        generator=torch.Generator().manual_seed(0),
    )
    # 4096 maps, each all kept or all dropped here: the standard error of the fraction is 0.0047.
    assert abs(float((calibrated == 0).float().mean()) - 0.1) < 0.02


# --- bad input names the argument ----------------------------------------------------------------------

X = torch.ones(2, 3, 8, 8)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: dt.drop_block(X, 0.1, 3, normalize=None), ValueError, r"normalize must be one of.*normalize=None"),
        (lambda: dt.drop_block(X, 0.1, 3, calibrate="False"), TypeError, r"calibrate must be True or False"),
        (lambda: dt.drop_block(X, 0.1, 3, share_channels="no"), TypeError, r"share_channels must be True or False"),
        (lambda: dt.drop_block(X, 0.1, 3, training="False"), TypeError, r"training must be True or False"),
        (lambda: dt.drop_block(X, 0.1, 3, share_batch=1), TypeError, r"share_batch must be True or False"),
        (lambda: dt.drop_block(X, np.bool_(True), 3), TypeError, r"drop_prob must be a real number"),
        (lambda: dt.drop_block(X, torch.tensor(True), 3), TypeError, r"drop_prob must be a real number.*bool"),
        (lambda: dt.drop_block(X, "0.1", 3), TypeError, r"drop_prob must be a real number.*'0\.1'"),
        (lambda: dt.drop_block(X, float("nan"), 3), ValueError, r"drop_prob must be in \[0, 1\].*nan"),
        (lambda: dt.drop_block(X.to(torch.float8_e4m3fn), 0.1, 3), TypeError, r"x must be float16.*float8_e4m3fn"),
        (lambda: dt.drop_block(X, 0.1, torch.tensor(3)), TypeError, r"block_size must hold Python ints"),
        (lambda: dt.drop_block(X, 0.1, 3, spatial_dims=4), ValueError, r"spatial_dims must be None, 1, 2 or 3"),
        (
            lambda: dt.apply_seeds(
                X, torch.zeros(2, 3, 6, 6, dtype=torch.bool), 3, normalize="expected", expected_drop=2.0
            ),
            ValueError,
            r"expected_drop must be in \[0, 1\)",
        ),
        (lambda: dt.sample_seeds((2, 4, -1, 8), 0.1, 3), ValueError, r"shape"),
        (lambda: dt.DropBlock2d(0.1, 3, noise="yes"), TypeError, r"noise must be True or False"),
        (lambda: dt.DropBlock2d(0.1, 3, auto_step=None), TypeError, r"auto_step must be True or False"),
        (lambda: dt.DropBlock2d(0.1, (3, 3, 3)), ValueError, r"block_size must be an int or a sequence of 2 ints"),
    ],
)
def test_bad_values_raise_an_error_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_block_size_message_speaks_of_torch_not_jax():
    with pytest.raises(TypeError) as raised:
        dt.DropBlock2d(0.1, 3.5)
    assert "jax" not in str(raised.value)


# --- the real peers' ResNets (the newest-torch environment has torchvision and timm) -----------------


def _insert_after_stage3(model, stage3_name):
    setattr(model, stage3_name, nn.Sequential(getattr(model, stage3_name), dt.DropBlock2d(schedules.ramp(0.1, 3), 7)))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("size, batch_sizes", [(64, (4, 4, 3))])
def test_compiled_torchvision_resnet18_with_the_paper_block_trains(size, batch_sizes):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _insert_after_stage3(torchvision.models.resnet18(num_classes=10), "layer3")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = train(model, batches(batch_sizes, shape=(3, size, size)), optimizer, torch.compile(model))
    assert np.isfinite(losses).all() and int(model.layer3[1].step) == len(batch_sizes)


@pytest.mark.slow
def test_compiled_timm_resnet18_with_the_paper_block_trains():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _insert_after_stage3(timm.create_model("resnet18", num_classes=10, pretrained=False), "layer3")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    compiled = torch.compile(model, backend="aot_eager")  # inductor: the torchvision test above
    losses = train(model, batches((4, 4, 3), shape=(3, 64, 64)), optimizer, compiled)
    assert np.isfinite(losses).all() and int(model.layer3[1].step) == 3


@pytest.mark.parametrize(
    "channels, seed_channels, seed_batch",
    [(16, 16, 4), (64, 64, 4), (6, 6, 4), (64, 1, 4), (16, 16, 1), (6, 6, 1), (6, 1, 1)],
    ids=["bytes", "words", "unpacked", "shared", "bytes shared by the batch", "shared by the batch", "shared by both"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("normalize", ["batch", "none"])
def test_inductor_applies_seeds_bit_for_bit_as_eager_mode(
    channels, seed_channels, seed_batch, channels_last, normalize
):
    # Compiled code builds its condition differently (see bitmask.unpack); the bits must not
    # change: +0 at dropped units (negative ones too), non-finite values there become 0,
    # kept ones are scaled alike, and the gradient is the same function of the gradient.
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, channels, 12, 12, generator=generator)
    x[:, :, 0::5, 1::4] = float("inf")
    x[:, :, 2::5, 3::4] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    seeds = torch.rand(seed_batch, seed_channels, 10, 10, generator=generator) < 0.05
    grad = torch.randn(x.shape, generator=generator)

    def run(function):
        leaf = x.clone().requires_grad_()
        out = function(leaf, seeds)
        # autograd.grad, not .grad: accumulating into a leaf would copy into x's layout anyway.
        (x_grad,) = torch.autograd.grad(out, leaf, grad)
        return out, x_grad

    def apply(x, seeds):
        return dt.apply_seeds(x, seeds, 3, normalize=normalize)

    eager_out, eager_grad = run(apply)
    compiled_out, compiled_grad = run(torch.compile(apply, fullgraph=True))
    dropped = eager_out == 0
    assert dropped.any() and (~torch.isfinite(x) & dropped).any()
    assert same_bits(compiled_out.detach(), eager_out.detach())
    assert same_bits(compiled_grad, eager_grad)
    assert compiled_out.stride() == eager_out.stride() == x.stride()
    assert compiled_grad.stride() == eager_grad.stride() == x.stride()  # the gradient keeps x's layout
    assert not torch.signbit(eager_out[dropped]).any()


@pytest.mark.slow
def test_a_compiled_resnet_keeps_one_bit_per_dropblock_unit_for_the_backward_pass():
    # The masks are kept packed (8 channels a byte, 32 an int32 word) and unpacked again in the
    # backward pass. A boolean mask kept instead (a byte per unit, which inductor writes lane by
    # lane on the CPU) made a compiled ResNet-18's training step 7-9% slower (docs/benchmarks.md).
    torch.manual_seed(0)
    model = small_resnet(lambda: dt.DropBlock2d(0.1, 3)).train()
    layers = [m for m in model.modules() if isinstance(m, dt.DropBlock2d)]
    compiled = torch.compile(model, fullgraph=True)  # no graph break: the layers run compiled
    x = torch.randn(4, 3, 32, 32)
    # 6 layers on 16 channels of 8x8 in stage 3 (bytes), 6 on 32 channels of 4x4 in stage 4 (words).
    assert len(layers) == 12
    units = 6 * 4 * 16 * 8 * 8 + 6 * 4 * 32 * 4 * 4

    def saved_bytes(training: bool) -> int:
        for layer in layers:
            layer.train(training)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.nbytes) or t, lambda t: t):
            compiled(x)
        return sum(sizes)

    extra = saved_bytes(True) - saved_bytes(False)
    assert 0 < extra <= units // 8 + 128 * len(layers)  # a bit per unit, and a few scalars per layer


@pytest.mark.parametrize("normalize, inplace", [("sample", False), ("expected", False), ("batch", True)])
def test_inductor_applies_shared_seeds_bit_for_bit_as_eager_mode_with_every_scale(normalize, inplace):
    # The int32 lanes of a shared mask (bitmask.dilate_lanes) count per sample and apply in place too.
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(4, 16, 12, 12, generator=generator)
    x[:, :, 1::4, 2::5] = float("nan")
    seeds = torch.rand(4, 1, 10, 10, generator=generator) < 0.05
    seeds[0] = False  # a sample with nothing dropped: its scale per sample is 1

    def apply(x, seeds):
        return dt.apply_seeds(x, seeds, 3, normalize=normalize, expected_drop=0.2, inplace=inplace)

    eager = apply(x.clone(), seeds)
    compiled = torch.compile(apply, fullgraph=True)(x.clone(), seeds)
    assert (eager == 0).any()
    assert same_bits(compiled, eager)


@pytest.mark.parametrize(
    "channels, sharing",
    [(16, {"share_channels": True}), (16, {"share_channels": True, "share_batch": True}), (6, {"share_batch": True})],
)
def test_a_compiled_shared_mask_keeps_its_int32_lanes_for_the_backward_pass(channels, sharing):
    # Kept as a boolean mask instead (a quarter of the bytes, so the partitioner's choice when
    # the backward pass tests the lanes at their own size), the compiled backward pass read it
    # lane by lane: 0.7 ms slower at (32, 256, 28, 28) on a 2-core CPU (bitmask.unpack_by_lane_masks).
    layer = torch.compile(dt.DropBlock2d(0.1, 3, **sharing), fullgraph=True)
    # A batch of 8: the lanes shared by the batch are then smaller than a boolean mask per unit.
    x = torch.randn(8, channels, 12, 12, requires_grad=True)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append((t.dtype, t.numel())) or t, lambda t: t):
        layer(x)
    mask_positions = 12 * 12 * (1 if "share_batch" in sharing else 8) * (1 if "share_channels" in sharing else channels)
    assert (torch.int32, mask_positions) in sizes
    # No boolean mask (a 0-dim flag of the tensor rate's finiteness may be saved beside the scale).
    assert all(dtype != torch.bool or numel == 1 for dtype, numel in sizes)
    assert sum(dtype.itemsize * numel for dtype, numel in sizes) <= 4 * mask_positions + 64  # the lanes and a scale


@pytest.mark.parametrize("share_channels", [False, True])
def test_a_compiled_forward_holds_no_more_than_its_output_and_a_bit_per_unit(share_channels):
    # The peak memory target of the benchmark (compiled dropout holds only its output), on a
    # grid drawn sparsely (rounds of gaps under torch.cond) with words of 32 channels. Before,
    # the seeds' words, the expansion's intermediate and the first round's positions were alive
    # beside the output: 56 KiB more here (1.6 MB on the benchmark's first shape).
    from benchmarks.bench import torch_peak_mb

    layer = torch.compile(dt.DropBlock2d(0.1, 7, share_channels=share_channels), fullgraph=True)
    x = torch.randn(8, 64, 28, 28)
    layer(x)
    peak_bytes = torch_peak_mb(lambda: layer(x), x.device) * 2**20
    assert peak_bytes <= x.nbytes + x.numel() / 8 + 4096


@pytest.mark.slow
def test_inductor_trains_new_layers_on_new_batch_and_channel_counts_with_sparse_seeds():
    # Layers compiled one after another share DropBlock's forward: the second shape compiles it
    # again with a symbolic batch and channel count, through the sparse sampler's torch.cond
    # (grids above the sparse threshold), forward and backward.
    for shape, block in [((8, 64, 28, 28), 7), ((16, 128, 14, 14), 5)]:
        layers = [
            torch.compile(dt.DropBlock2d(0.1, block, share_channels=share), fullgraph=True) for share in (False, True)
        ]
        # Seeded, and free of exact zeros (torch.randn gives about 6 in 10**8), which would read
        # as dropped units below.
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        assert (x != 0).all()
        for layer in layers:
            assert (layer(x) == 0).any()
        for layer in layers:
            leaf = x.clone().requires_grad_()
            out = layer(leaf)
            out.backward(torch.ones_like(out))
            kept = out != 0
            torch.testing.assert_close(leaf.grad[kept], (out / leaf)[kept].detach())
            assert (leaf.grad[~kept] == 0).all()


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize(
    "call",
    [
        lambda t, g: dt.drop_block(t * 1.0, 0.3, 3, generator=g),
        lambda t, g: dt.apply_seeds(t * 1.0, dt.sample_seeds(t.shape, 0.3, 3, generator=g), 3),
        lambda t, g: dt.apply_seeds(t * 1.0, torch.ones(2, 4, 10, 10, dtype=torch.bool), 3, noise=True, generator=g),
    ],
    ids=["drop_block", "sample_seeds", "apply_seeds-noise"],
)
def test_a_generator_replayed_by_activation_checkpointing_is_refused(call, use_reentrant):
    # The checkpoint restores the global random state only: a generator's second draw gave another
    # mask than the forward's, so the gradient disagreed with it (wrong gradients, silently).
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    out = checkpoint(call, x, torch.Generator().manual_seed(0), use_reentrant=use_reentrant)
    with pytest.raises(RuntimeError, match=r"generator=.*activation checkpointing"):
        out.sum().backward()
    # The global generator is replayed: the gradient is the one without checkpointing.
    leaves = [x.detach().clone().requires_grad_() for _ in range(2)]
    for leaf, run in zip(leaves, (lambda *a: checkpoint(call, *a, use_reentrant=use_reentrant), call), strict=True):
        torch.manual_seed(1)
        run(leaf, None).sum().backward()
    assert torch.equal(leaves[0].grad, leaves[1].grad) and (leaves[1].grad == 0).any()


def test_compile_with_dynamic_true_draws_sparse_seeds_for_every_batch():
    # The sampler's second-round budget took a float rate cap, which dynamic=True traced as a
    # symbol inside torch.cond, and round() of it failed: nothing compiled.
    compiled = torch.compile(lambda x, p: dt.drop_block(x, p, 3), backend="aot_eager", fullgraph=True, dynamic=True)
    for batch in (8, 7, 16):  # grids of 18 x 18 x 8 channels per example: sparse from a batch of 7
        x = torch.rand(batch, 8, 20, 20, generator=torch.Generator().manual_seed(batch)) + 0.5
        dropped = float((compiled(x, torch.tensor(0.2)) == 0).float().mean())
        assert 0.1 < dropped < 0.3, (batch, dropped)  # 0.18 expected (valid region, block 3)
