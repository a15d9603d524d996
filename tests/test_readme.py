"""Every Python example in the README and in docs/ runs as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{page.relative_to(ROOT)}-{index}")
    for page in PAGES
    for index, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL))
]

# torchvision and timm import only beside the newest torch: the second CI environment runs those.
PEERS = ("torchvision", "timm")


def test_every_page_is_found_and_has_examples():
    assert len(PAGES) >= 7 and len(BLOCKS) >= 10


@pytest.mark.parametrize("block", BLOCKS)
def test_example_runs(block):
    for peer in PEERS:
        if re.search(rf"^\s*(import|from)\b.*\b{peer}\b", block, flags=re.MULTILINE):
            pytest.importorskip(peer)
    exec(compile(block, "example", "exec"), {})
