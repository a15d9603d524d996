"""Sharded data parallel: 4 simulated CPU devices give the single-device output for the same key."""

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
