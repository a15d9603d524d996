"""Every Python example in the README runs as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


# torchvision and timm import only beside the newest torch: the second CI environment runs those.
PEERS = ("torchvision", "timm")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    for peer in PEERS:
        if re.search(rf"^\s*(import|from)\b.*\b{peer}\b", BLOCKS[index], flags=re.MULTILINE):
            pytest.importorskip(peer)
    exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), {})
