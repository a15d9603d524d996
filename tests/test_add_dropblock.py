"""add_dropblock on the real torchvision and timm ResNets (random weights stand in for pretrained ones).

torchvision and timm import only beside the newest torch (the second CI environment); there the
whole module runs, elsewhere the tests that need them skip.
"""

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import dropblock_torch as dt
from dropblock_torch.modules import _DropBlockNd


def torchvision_resnet(depth):
    torchvision = pytest.importorskip("torchvision")
    return getattr(torchvision.models, f"resnet{depth}")(num_classes=10)


def timm_resnet(depth):
    timm = pytest.importorskip("timm")
    return timm.create_model(f"resnet{depth}", num_classes=10, pretrained=False)


MODELS = [
    pytest.param(lambda: torchvision_resnet(18), id="torchvision-resnet18"),
    pytest.param(lambda: torchvision_resnet(50), id="torchvision-resnet50"),
    pytest.param(lambda: timm_resnet(18), id="timm-resnet18"),
]


def dropblock_layers(model):
    return {name: module for name, module in model.named_modules() if isinstance(module, _DropBlockNd)}


def x_batch(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("build", MODELS)
def test_pretrained_weights_load_strictly_and_eval_is_bit_identical(build):
    torch.manual_seed(0)
    pretrained = build().eval()
    model = dt.add_dropblock(copy.deepcopy(build()), total_steps=100)
    model.load_state_dict(pretrained.state_dict(), strict=True)
    model.eval()
    x = x_batch()
    with torch.no_grad():
        assert torch.equal(model(x), pretrained(x))


@pytest.mark.parametrize("build", MODELS)
def test_the_paper_placement_is_stages_3_and_4_after_every_batch_norm_and_on_every_skip(build):
    model = dt.add_dropblock(build(), drop_prob=0.2)
    layers = dropblock_layers(model)
    assert layers and all(name.startswith(("layer3.", "layer4.")) for name in layers)
    for stage, rate in (("layer3", 0.05), ("layer4", 0.2)):
        for index, block in enumerate(getattr(model, stage)):
            names = {name.rsplit(".", 1)[-1] for name in layers if name.startswith(f"{stage}.{index}.")}
            norms = {"bn1", "bn2", "bn3"} if hasattr(block, "bn3") else {"bn1", "bn2"}
            skip = "dropblock_downsample" if not isinstance(block.downsample, _DropBlockNd) else "downsample"
            assert names == {f"dropblock_{norm}" for norm in norms} | {skip}
            assert all(layers[f"{stage}.{index}.{name}"].drop_prob == pytest.approx(rate) for name in names)
            assert all(layers[f"{stage}.{index}.{name}"].block_size == (7, 7) for name in names)


@pytest.mark.parametrize("build", MODELS)
def test_the_timm_placement_follows_the_3x3_convolution_only(build):
    model = dt.add_dropblock(build(), preset="timm", drop_prob=0.2)
    layers = dropblock_layers(model)
    kinds = {name.rsplit(".", 1)[-1] for name in layers}
    assert kinds == ({"dropblock_bn2"} if hasattr(model.layer3[0], "bn3") else {"dropblock_bn1"})
    assert {layer.block_size for name, layer in layers.items() if name.startswith("layer3")} == {(5, 5)}
    assert {layer.block_size for name, layer in layers.items() if name.startswith("layer4")} == {(3, 3)}


@pytest.mark.parametrize("build", MODELS)
def test_training_drops_blocks_inside_the_network(build):
    model = dt.add_dropblock(build(), drop_prob=0.3, block_size=3).train()
    seen = {}
    hook = model.layer4[0].bn1.register_forward_hook(lambda m, i, out: seen.__setitem__("bn1", out.clone()))
    torch.manual_seed(0)
    model(x_batch(4, 96))
    hook.remove()
    # The hook added after DropBlock's sees its output (before the in-place ReLU): the map is 3x3,
    # so a block drops a whole channel, each of the 4 x 512 with probability 0.3 (sd 0.01).
    fraction = float((seen["bn1"] == 0).float().mean())
    assert 0.25 < fraction < 0.35


def calls_per_layer(model, x):
    """How many times each inserted DropBlock layer ran in one forward of ``model``."""
    calls = {name: 0 for name in dropblock_layers(model)}
    handles = [
        layer.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls[name] + 1))
        for name, layer in dropblock_layers(model).items()
    ]
    model(x)
    for handle in handles:
        handle.remove()
    return calls


@pytest.mark.parametrize("build", MODELS)
def test_batch_norms_replaced_after_adding_keep_their_dropblock(build):
    # DDP's SyncBatchNorm conversion (and any swap of a batch norm) builds modules without the
    # old ones' hooks: 8 of resnet18's 12 layers stopped running, silently.
    model = dt.add_dropblock(build(), drop_prob=0.3, block_size=3).train()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # runs as a BatchNorm without a process group
    assert isinstance(model.layer4[0].bn1, nn.SyncBatchNorm)
    for _ in range(2):  # once per forward, not once more per forward
        assert set(calls_per_layer(model, x_batch(2, 32)).values()) == {1}
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert set(calls_per_layer(copied, x_batch(2, 32)).values()) == {1}
    # The replacement sees the layer's output: its zeros where the batch norm put none.
    seen = {}
    model.layer4[0].bn1.register_forward_hook(lambda m, i, out: seen.__setitem__("bn1", out.clone()))
    torch.manual_seed(0)
    model(x_batch(4, 96))
    assert 0.25 < float((seen["bn1"] == 0).float().mean()) < 0.35  # as in the test above


@pytest.mark.parametrize("build", MODELS)
def test_checkpoints_round_trip_with_the_schedule_step_and_set_step_reaches_every_layer(build):
    model = dt.add_dropblock(build(), total_steps=10, block_size=3).train()
    for _ in range(3):
        model(x_batch(2, 32))
    steps = {int(layer.step) for layer in dropblock_layers(model).values()}
    assert steps == {3}
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    resumed = dt.add_dropblock(build(), total_steps=10, block_size=3)
    resumed.load_state_dict(torch.load(buffer), strict=True)
    assert {int(layer.step) for layer in dropblock_layers(resumed).values()} == {3}
    dt.set_step(resumed, 7)
    rates = sorted({round(layer.drop_prob, 6) for layer in dropblock_layers(resumed).values()})
    assert rates == pytest.approx([0.025 * 7 / 10, 0.1 * 7 / 10])
    pickle.loads(pickle.dumps(resumed))  # hooks and schedules pickle


@pytest.mark.slow
def test_a_compiled_resnet_with_added_dropblock_trains():
    torch.manual_seed(0)
    model = dt.add_dropblock(torchvision_resnet(18), total_steps=4, block_size=3).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    compiled = torch.compile(model, backend="aot_eager")  # inductor on this model: test_training_loops_torch
    losses = []
    for n in (4, 4, 3):
        x, y = x_batch(n, 64, seed=n), torch.arange(n) % 10
        loss = nn.functional.cross_entropy(compiled(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert {int(layer.step) for layer in dropblock_layers(model).values()} == {3}


def test_unknown_models_and_bad_arguments_are_named():
    with pytest.raises(TypeError, match=r"torchvision and timm ResNets.*got Sequential without such a layer1"):
        dt.add_dropblock(nn.Sequential(nn.Conv2d(3, 3, 3)))
    model = torchvision_resnet(18)
    with pytest.raises(ValueError, match=r"preset must be one of.*preset='resnet'"):
        dt.add_dropblock(model, preset="resnet")
    with pytest.raises(ValueError, match=r"drop_prob=1\.5"):
        dt.add_dropblock(model, drop_prob=1.5)
    with pytest.raises(ValueError, match=r"total_steps=0"):
        dt.add_dropblock(model, total_steps=0)
    dt.add_dropblock(model)
    with pytest.raises(ValueError, match="already has DropBlock"):
        dt.add_dropblock(model)


def test_a_timm_resnet_built_with_drop_block_rate_is_refused_not_doubled():
    timm = pytest.importorskip("timm")
    with pytest.raises(ValueError, match="already has DropBlock"):
        dt.add_dropblock(timm.create_model("resnet18", drop_block_rate=0.1, pretrained=False))


@pytest.mark.parametrize("preset", ["paper", "timm"])
def test_torch_fx_tracing_is_refused_rather_than_leaving_the_layers_out(preset):
    # torch.fx records a batch norm without its forward hooks: with the timm placement (hooks
    # only) a traced model silently had no DropBlock at all.
    model = dt.add_dropblock(torchvision_resnet(18), preset=preset)
    with pytest.raises(RuntimeError, match=r"torch\.fx records a batch norm.*without its forward hooks"):
        torch.fx.symbolic_trace(model)


def test_auto_step_false_leaves_the_steps_to_set_step():
    # Gradient accumulation: the ramp follows the optimizer's step, not the forward calls.
    model = dt.add_dropblock(torchvision_resnet(18), total_steps=10, block_size=3, auto_step=False).train()
    for _ in range(3):
        model(x_batch(2, 32))
    layers = dropblock_layers(model).values()
    assert {int(layer.step) for layer in layers} == {0}
    dt.set_step(model, 4)
    assert {int(layer.step) for layer in layers} == {4}
    with pytest.raises(TypeError, match=r"auto_step=0"):
        dt.add_dropblock(torchvision_resnet(18), auto_step=0)


def test_a_fused_or_copied_batch_norm_runs_its_dropblock_once():
    # A fuser moves the batch norm's hooks onto the fused convolution (the norm becoming an
    # Identity), and a deep copy of the norm carries a copy of the hook with a copy of the layer:
    # each ran the layer a second time (the step advanced twice per forward).
    from torch.ao.quantization import fuse_modules_qat

    model = dt.add_dropblock(torchvision_resnet(18), total_steps=100, block_size=3).train()
    fuse_modules_qat(model.layer4[0], [["conv1", "bn1"]], inplace=True)
    model.layer4[1].bn1 = copy.deepcopy(model.layer4[1].bn1)
    for _ in range(2):
        assert set(calls_per_layer(model, x_batch(2, 32)).values()) == {1}
    assert int(model.layer4[0].dropblock_bn1.step) == 2 and len(model.layer4[1].bn1._forward_hooks) == 1
