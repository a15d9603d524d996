"""What the fast test loop, ``pytest -m "not slow" -n 2``, leaves out: one list, in one place.

Slow are the examples and benchmarks, subprocesses and several processes, statistics over
many draws, compile-heavy torch scenarios and training runs, and most of each exact grid. A
grid listed in ``COVERED_GRIDS`` keeps a covering subset in the fast loop: every value of
each parameter, and every pair of values of the named factors, occurs in some test kept; the
rest of the grid is marked slow. Some modules mark their own slow tests with
``@pytest.mark.slow``; this hook marks the others by module and test name.

``pytest_collection_modifyitems`` sees every item collected in one run, so this hook marks the
parity suite and the doctests too whenever they are collected together with ``tests/`` (the
default ``testpaths``). ``pytest parity_tests`` alone does not load this file.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

import pytest

# Modules that are slow as a whole (their tests start processes or run whole programs).
SLOW_MODULES = {
    "tests/test_readme.py": "runs every code block of the README and docs/",
    "tests/test_imports.py": "one interpreter per package",
    "tests/test_packaging.py": "builds and installs the wheel",
    "tests/test_torch_ddp.py": "several processes",
}

# Slow tests, by module and test name.
SLOW_TESTS = {
    "parity_tests/test_parity.py": {
        "test_statistical_parity": "statistics over 1024 draws of every configuration",
        "test_the_cli_writes_the_report_and_exits_zero": "a subprocess",
    },
    "tests/test_compat_torchvision.py": {
        "test_the_drop_ins_import_neither_peer": "a subprocess",
        "test_compiles_with_fullgraph": "torch.compile",
    },
    "tests/test_compat_timm.py": {
        "test_compiles_with_fullgraph": "torch.compile",
        "test_a_timm_resnet_gives_the_same_outputs_with_the_drop_in": "two ResNets",
    },
    "tests/test_training_loops_torch.py": {
        "test_inductor_compiles_the_paper_block_with_changing_batch_and_map_sizes": "torch.compile",
        "test_the_layer_compiles_fullgraph_with_changing_batch_and_map_sizes_and_the_global_generator": "compile",
        "test_fullgraph_with_a_changing_float_rate_has_no_graph_break": "torch.compile",
        "test_a_tensor_rate_never_recompiles": "torch.compile",
        "test_torch_export_in_train_mode_with_a_dynamic_batch": "torch.export",
        "test_gradient_accumulation_follows_the_optimizer_step_with_set_step": "trains a model",
    },
    # Doctests: the examples that train a model or compile several large programs.
    "dropblock_jax/nnx.py": {"dropblock_jax.nnx": "trains a model"},
    "dropblock_jax/equinox.py": {"dropblock_jax.equinox": "trains a model", "dropblock_jax.equinox.DropBlock": "vmap"},
    "dropblock_jax/functional.py": {"dropblock_jax.functional.dropblock": "jit and vmap of a 100k-unit input"},
    "dropblock_jax/sampling.py": {"dropblock_jax.sampling.bernoulli_words": "a 500k-position grid"},
    "dropblock_jax/bitmask.py": {"dropblock_jax.bitmask.unset_count": "the chunked count"},
    "tests/test_torch_bitmask.py": {
        "test_a_traced_rate_of_zero_or_nan_draws_no_seed": "torch.compile",
    },
    "tests/test_training_loops_jax.py": {
        "test_nnx_cnn_with_a_schedule_and_gradient_accumulation_under_nnx_jit": "trains a model",
        "test_the_same_seed_gives_the_same_draws_eagerly_and_under_nnx_jit": "trains a model twice",
        "test_linen_cnn_trains_under_jax_jit_with_its_step_collection": "trains a model",
        "test_pickle_and_deepcopy_of_an_nnx_model_holding_a_schedule": "trains a model",
    },
}


# Tests that use these fixtures are slow, whatever their name.
SLOW_FIXTURES = {
    "paper_draws": "1024 statistical draws of two parity configurations",
}


@dataclasses.dataclass(frozen=True)
class Cover:
    """The fast subset of a grid: every pair of values of ``pairwise``, every value of ``each``.

    ``each=None`` means every parameter of the grid; ``len(name)`` is the length of a tuple
    parameter (``len(shape)``: the rank). A grid keeps at least its first test.
    """

    pairwise: tuple[str, ...] = ()
    each: tuple[str, ...] | None = None


# Parametrized tests whose fast subset covers the grid, by module and test name.
COVERED_GRIDS = {
    "parity_tests/test_parity.py": {
        # Every configuration label (1D, 2D, 3D, odd, even, oversize, packed) occurs.
        "test_exact_parity": Cover(pairwise=("seed_region", "share", "normalize", "dtype")),
    },
    "tests/test_jax_functional.py": {
        "test_mask_is_the_dilation_of_the_seeds": Cover(each=("seed_region", "len(shape)")),
        "test_normalisation_is_exact": Cover(pairwise=("normalize", "share_channels")),
        "test_shape_and_dtype_are_kept": Cover(each=("dtype", "len(shape)")),
        "test_drop_prob_one_gives_zeros": Cover(),
        # The sampler's own test has a sparse NaN rate.
        "test_a_traced_nan_or_infinite_rate_makes_the_whole_output_nan": Cover(each=()),
        "test_two_to_the_31_elements_or_more_trace_without_int32_overflow": Cover(),
        "test_gradient_is_keep_times_scale": Cover(each=()),
    },
    "tests/test_bitmask.py": {
        "test_packed_masks_equal_the_reference_dilation": Cover(each=("seed_region", "channel_axis")),
        "test_unset_count_in_chunks_is_the_exact_count": Cover(),
        "test_dropblock_equals_apply_seeds_of_sample_seeds_with_the_same_key": Cover(each=()),  # the sparse one
        "test_pack_and_unpack_are_inverse": Cover(each=()),
    },
    "tests/test_torch_bitmask.py": {
        # Each compiles the dilation with torch.compile.
        "test_dilate_matches_the_numpy_reference": Cover(each=("seed_region",)),
    },
    "tests/test_properties.py": {
        # Every rank and every normalisation; hypothesis still draws rates and keys for each.
        "test_jax_output_is_finite_binary_masked_and_keeps_shape_and_dtype": Cover(each=("len(shape)", "normalize")),
    },
    "tests/test_training_loops_jax.py": {
        "test_inf_and_nan_inputs_stay_where_kept_and_vanish_where_dropped": Cover(each=()),
    },
}


def _value_key(value: object) -> str:
    """A name for a parameter value that is the same in every process (no ids or addresses)."""
    if isinstance(value, str | int | float | bool | tuple | type(None) | dict):
        return repr(value)
    return getattr(value, "__name__", None) or repr(value)


def _factors(item: pytest.Item) -> dict[str, str]:
    """The item's parameters by name; a dataclass parameter (a configuration) by its fields."""
    factors = {}
    for name, value in item.callspec.params.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            factors.update({field.name: _value_key(getattr(value, field.name)) for field in dataclasses.fields(value)})
        else:
            factors[name] = _value_key(value)
        if isinstance(value, tuple):
            factors[f"len({name})"] = repr(len(value))
    return factors


def _covering_subset(items: list[pytest.Item], cover: Cover) -> set[int]:
    """Indices of a small subset of ``items`` that covers what ``cover`` asks: greedy set cover.

    Deterministic (ties go to the earlier item), so every xdist worker keeps the same tests.
    """
    wanted = []
    for item in items:
        factors = _factors(item)
        each = factors if cover.each is None else cover.each
        keys = {(name, factors[name]) for name in each if name in factors}
        pairs = [name for name in cover.pairwise if name in factors]
        keys |= {((a, factors[a]), (b, factors[b])) for a, b in itertools.combinations(pairs, 2)}
        wanted.append(keys)
    covered: set = set()
    kept = {0}
    covered |= wanted[0]
    while True:
        gains = [len(keys - covered) for keys in wanted]
        best = max(range(len(items)), key=lambda index: (gains[index], -index), default=None)
        if best is None or gains[best] == 0:
            return kept
        kept.add(best)
        covered |= wanted[best]


def _grids(items: Iterable[pytest.Item]) -> dict[tuple[str, str], list[pytest.Item]]:
    """The items of each grid in ``COVERED_GRIDS``, in collection order."""
    grids: dict[tuple[str, str], list[pytest.Item]] = {}
    for item in items:
        module, name = item.nodeid.split("::")[0], getattr(item, "originalname", item.name)
        if name in COVERED_GRIDS.get(module, {}) and hasattr(item, "callspec"):
            grids.setdefault((module, name), []).append(item)
    return grids


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        module = item.nodeid.split("::")[0]
        name = getattr(item, "originalname", item.name)
        fixtures = getattr(item, "fixturenames", ())
        if module in SLOW_MODULES or name in SLOW_TESTS.get(module, {}) or any(f in SLOW_FIXTURES for f in fixtures):
            item.add_marker(slow)
    for (module, name), grid in _grids(items).items():
        kept = _covering_subset(grid, COVERED_GRIDS[module][name])
        for index, item in enumerate(grid):
            if index not in kept:
                item.add_marker(slow)
