"""Sharded data parallel on 4 simulated CPU devices.

With one key (``jit`` over a sharded batch) the output equals the single-device output; inside
``jax.shard_map`` with a key (or a rate) per device, each shard equals ``dropblock`` run on its
own slice with its own key.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import dropblock_jax as dj

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    batch = NamedSharding(mesh, P("data"))
    x = jax.random.uniform(jax.random.key(0), (8, 16, 16, 4), minval=0.5, maxval=1.5)
    key = jax.random.key(1)
    results = {}
    for normalize in ("batch", "sample"):
        for share_batch in (False, True):
            step = jax.jit(lambda x, key, p: dj.dropblock(x, key, p, 5, normalize=normalize, share_batch=share_batch))
            single = np.asarray(step(x, key, 0.2))
            sharded_out = step(jax.device_put(x, batch), key, 0.2)
            sharded = np.asarray(sharded_out)
            results[f"{normalize}-{share_batch}"] = {
                "equal": bool(np.array_equal(single, sharded)),
                "devices": len(sharded_out.sharding.device_set),
                "dropped": float((single == 0).mean()),
            }
    # normalize="batch" is global: one scale for the whole sharded batch.
    out = np.asarray(jax.jit(lambda x: dj.dropblock(x, key, 0.2, 5))(jax.device_put(x, batch)))
    ratio = (out / np.asarray(x))[out != 0]
    results["one_scale"] = bool(np.allclose(ratio, ratio[0], rtol=1e-6))
    print(json.dumps(results))
    """
)


@pytest.mark.slow
def test_sharded_batch_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results.pop("one_scale")
    for name, check in results.items():
        assert check["equal"], name
        assert check["devices"] == 4, name
        assert 0.05 < check["dropped"] < 0.3, name


# Each device's shard of the batch, (2, 36, 36, 64) with a block of 5, has a seed grid of
# 2 * 32 * 32 * 64 = 131072 positions: far past the 2**14 from which the sampler draws seeds
# sparsely (a lax.while_loop, whose carry must vary across devices as the key does).
SHARD_MAP_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import dropblock_jax as dj
    from dropblock_common import sampling as policy

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
    per_device = lambda f, in_specs: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=P("data")))
    x = jax.random.uniform(jax.random.key(0), (8, 36, 36, 64), minval=0.5, maxval=1.5)
    key = jax.random.key(1)
    # One rate per device; 0.3 is too large for the traced rate's sparse budget, so that device
    # takes the dense branch of the sampler's lax.cond while the others take the sparse one.
    rates = jnp.array([0.02, 0.05, 0.3, 0.1], jnp.float32)
    device_key = lambda key: jax.random.fold_in(key, jax.lax.axis_index("data"))
    shard = lambda a, i: a[2 * i : 2 * i + 2]
    single = jax.jit(dj.dropblock, static_argnames="block_size")
    single_seeds = jax.jit(dj.sample_seeds, static_argnames=("shape", "block_size"))
    keys = jax.random.split(key, 4)

    cases = {
        "fold_in key": (
            per_device(lambda x, key: dj.dropblock(x, device_key(key), 0.1, 5), (P("data"), P()))(put(x), key),
            [single(shard(x, i), jax.random.fold_in(key, i), 0.1, block_size=5) for i in range(4)],
        ),
        "sharded keys, traced rate": (
            per_device(lambda x, keys, p: dj.dropblock(x, keys[0], p, 5), (P("data"), P("data"), P()))(
                put(x), put(keys), jnp.float32(0.1)
            ),
            [single(shard(x, i), keys[i], jnp.float32(0.1), block_size=5) for i in range(4)],
        ),
        "rate per device, one key": (
            per_device(lambda x, key, p: dj.dropblock(x, key, p[0], 5), (P("data"), P(), P("data")))(
                put(x), key, put(rates)
            ),
            [single(shard(x, i), key, rates[i], block_size=5) for i in range(4)],
        ),
        "sample_seeds, fold_in key": (
            per_device(lambda x, key: dj.sample_seeds(device_key(key), x.shape, 0.1, 5), (P("data"), P()))(
                put(x), key
            ),
            [single_seeds(jax.random.fold_in(key, i), (2, 36, 36, 64), 0.1, block_size=5) for i in range(4)],
        ),
    }
    results = {}
    for name, (sharded, expected) in cases.items():
        sharded = [shard(np.asarray(sharded), i) for i in range(4)]
        dropped = [float((s == 0).mean()) for s in sharded]
        results[name] = {
            "equal": [bool(np.array_equal(s, np.asarray(e))) for s, e in zip(sharded, expected)],
            "dropped": dropped,
            "shards_differ": not np.array_equal(sharded[0] == 0, sharded[1] == 0),
        }
    gamma = dj.seed_rate((36, 36), 0.1, 5)
    results["sparse"] = policy.seed_budget(2 * 32 * 32 * 64, gamma) is not None
    print(json.dumps(results))
    """
)


@pytest.mark.slow
def test_shard_map_with_a_key_per_device_equals_each_shard_alone():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", SHARD_MAP_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results.pop("sparse"), "the per-device seed grid must be large enough for the sparse sampler"
    for name, check in results.items():
        assert all(check["equal"]), (name, check["equal"])
        assert check["shards_differ"], name
    for name in ("fold_in key", "sharded keys, traced rate"):
        assert all(0.05 < d < 0.15 for d in results[name]["dropped"]), (name, results[name]["dropped"])
    # sample_seeds: the seed rate of drop_prob=0.1 with a block of 5 on a 36x36 map is about 0.005.
    assert all(0.003 < d < 0.007 for d in [1 - d for d in results["sample_seeds, fold_in key"]["dropped"]])
