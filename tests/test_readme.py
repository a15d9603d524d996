"""Every Python example in the README, CONTRIBUTING.md and docs/ runs as written, and every link resolves."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{page.relative_to(ROOT)}-{index}")
    for page in PAGES
    for index, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL))
]

# torchvision and timm import only beside the newest torch: the second CI environment runs those.
PEERS = ("torchvision", "timm")


def test_every_page_is_found_and_has_examples():
    assert all(page.is_file() for page in PAGES)
    assert {"design.md", "jax.md", "torch.md", "schedules.md", "parity.md"} <= {page.name for page in PAGES}
    assert len(BLOCKS) >= 10
    assert any(param.id.startswith("docs/design.md-") for param in BLOCKS)


def _links(page: pathlib.Path) -> list[str]:
    prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    prose = re.sub(r"`[^`]*`", "", prose)
    return re.findall(r"\]\(([^)\s]+)\)", prose)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_of_the_repository(page):
    for link in _links(page):
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue
        target = (page.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT) and target.exists(), f"{page.name}: {link}"


def test_readme_links_the_project_documents_and_stays_a_landing_page():
    readme = ROOT / "README.md"
    assert {"docs/design.md", "CONTRIBUTING.md", "CHANGELOG.md"} <= set(_links(readme))
    assert len(readme.read_text().splitlines()) <= 200


@pytest.mark.parametrize("block", BLOCKS)
def test_example_runs(block):
    for peer in PEERS:
        if re.search(rf"^\s*(import|from)\b.*\b{peer}\b", block, flags=re.MULTILINE):
            pytest.importorskip(peer)
    exec(compile(block, "example", "exec"), {})
