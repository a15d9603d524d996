"""The wheel, installed outside the checkout, holds every public module, one version and the parity CLI.

As optax tests its package: build the wheel, install it into a fresh virtualenv in a temporary
folder, and import from there with the checkout out of reach. Installing the dependencies would
download torch and jax, so the new virtualenv sees this one's site-packages through a ``.pth``
file, minus dropblock-jax's own editable install and metadata.
"""

import importlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DISTRIBUTION = "dropblock-jax"
PACKAGES = ("dropblock_common", "dropblock_jax", "dropblock_torch", "parity_tests")
VERSIONED = ("dropblock_common", "dropblock_jax", "dropblock_torch")
PUBLIC_MODULES = (
    "dropblock_common",
    "dropblock_jax",
    "dropblock_jax.nnx",
    "dropblock_jax.linen",
    "dropblock_jax.equinox",
    "dropblock_jax.schedules",
    "dropblock_torch",
    "dropblock_torch.compat",
    "dropblock_torch.compat.timm",
    "dropblock_torch.compat.torchvision",
    "parity_tests",
)
LEFT_OUT = ("tests", "examples", "benchmarks")
# What a build must not copy from the checkout: environments, history, caches and earlier builds.
NOT_SOURCE = shutil.ignore_patterns(
    ".venv*", ".git", "__pycache__", "build", "dist", "*.egg-info", ".*_cache", ".hypothesis", "parity_report", "out"
)
TIMEOUT = 240


def _project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_every_version_is_the_one_in_pyproject():
    assert importlib.metadata.version(DISTRIBUTION) == _project_version(), "reinstall: pip install -e ."
    for package in VERSIONED:
        assert importlib.import_module(package).__version__ == _project_version(), package


def _clean_env(venv: pathlib.Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    if venv is not None:
        env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


def _run(args, cwd: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _outside_checkout(path: pathlib.Path) -> pathlib.Path:
    path = path.resolve()
    assert not path.is_relative_to(ROOT), f"{path} is inside the checkout"
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """The wheel built offline from a copy of the working tree (no stale ``build/`` of the checkout)."""
    work = _outside_checkout(tmp_path_factory.mktemp("build"))
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    _run([*command, source, "-w", work / "dist"], cwd=work, env=_clean_env())
    (built,) = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> pathlib.Path:
    """A fresh virtualenv with the wheel installed and this environment's dependencies visible."""
    work = _outside_checkout(tmp_path_factory.mktemp("installed"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work, env=_clean_env())
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work, _clean_env(venv))
    # A view of this environment's site-packages without dropblock-jax: its editable finder and
    # metadata would otherwise shadow the wheel or answer importlib.metadata in its place.
    dependencies = work / "dependencies"
    dependencies.mkdir()
    ours = {DISTRIBUTION.replace("-", "_"), *PACKAGES}
    for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.split("-")[0]
        if entry.name.startswith("__editable__") or name in ours or entry.suffix == ".pth":
            continue
        (dependencies / entry.name).symlink_to(entry)
    (pathlib.Path(purelib.stdout.strip()) / "dependencies.pth").write_text(f"{dependencies}\n")
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
        work,
        _clean_env(),
    )
    return venv


@pytest.mark.slow
def test_wheel_holds_the_packages_and_the_console_script_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {*PACKAGES, f"dropblock_jax-{_project_version()}.dist-info"}
    assert not [name for name in names if name.split("/")[0] in LEFT_OUT]
    for module in ("parity_tests/__main__.py", "dropblock_torch/compat/timm.py", "dropblock_jax/equinox.py"):
        assert module in names
    for package in PACKAGES[:3]:
        assert f"{package}/py.typed" in names
    entry_points = zipfile.ZipFile(wheel).read(f"dropblock_jax-{_project_version()}.dist-info/entry_points.txt")
    assert "dropblock-parity = parity_tests.__main__:main" in entry_points.decode()


IMPORT_EVERYTHING = """
import importlib, importlib.metadata, json, pkgutil, sys
names = sys.argv[1].split(",")
for package in sys.argv[2].split(","):
    names += [info.name for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")]
modules = {name: importlib.import_module(name) for name in names}
print(json.dumps({
    "files": {name: module.__file__ for name, module in modules.items()},
    "versions": {name: getattr(module, "__version__", None) for name, module in modules.items() if "." not in name},
    "metadata": importlib.metadata.version("dropblock-jax"),
    "metadata_root": str(importlib.metadata.distribution("dropblock-jax").locate_file("")),
}))
"""


@pytest.mark.slow
def test_installed_wheel_imports_every_module_from_its_own_site_packages(venv):
    cwd = _outside_checkout(venv.parent)
    args = [venv / "bin" / "python", "-c", IMPORT_EVERYTHING, ",".join(PUBLIC_MODULES), ",".join(PACKAGES)]
    found = json.loads(_run(args, cwd, _clean_env(venv)).stdout)
    site_packages = venv.resolve()
    assert set(PUBLIC_MODULES) <= set(found["files"])
    assert "parity_tests.exact" in found["files"] and "parity_tests.statistical" in found["files"]
    for name, file in found["files"].items():
        assert pathlib.Path(file).resolve().is_relative_to(site_packages), f"{name} imported from {file}"
    assert pathlib.Path(found["metadata_root"]).resolve().is_relative_to(site_packages)
    assert found["metadata"] == _project_version()
    for package in VERSIONED:
        assert found["versions"][package] == _project_version(), package


@pytest.mark.slow
def test_installed_parity_cli_runs_as_a_console_script_and_as_a_module(venv):
    # A real report takes minutes even at the smallest --draws; pytest parity_tests runs the checks.
    cwd, env = _outside_checkout(venv.parent), _clean_env(venv)
    script = _run([venv / "bin" / "dropblock-parity", "--help"], cwd, env)
    module = _run([venv / "bin" / "python", "-m", "parity_tests", "--help"], cwd, env)
    for result in (script, module):
        assert "--draws" in result.stdout and "--device" in result.stdout
    # The wrapper passes the exit status on: argparse's 2 for a bad option, not a silent 0.
    refused = subprocess.run(
        [str(venv / "bin" / "dropblock-parity"), "--no-such-option"], cwd=cwd, env=env, capture_output=True, timeout=60
    )
    assert refused.returncode == 2
