"""Every paper README shows exactly the generated tables of its results/ folder."""
import shutil

import pytest

from shared.bench import copy_tables_to_readme
from shared.export import ROOT

PAPERS = [p.name for p in sorted(ROOT.iterdir())
          if (p / "README.md").is_file() and (p / "results").is_dir() and (p / "__init__.py").is_file()]


@pytest.mark.parametrize("paper", PAPERS)
def test_readme_tables_are_the_generated_ones(paper, tmp_path):
    readme = ROOT / paper / "README.md"
    copy = tmp_path / "README.md"
    shutil.copy2(readme, copy)
    names = copy_tables_to_readme(copy, ROOT / paper / "results")
    assert names, f"{paper}/README.md marks no generated table"
    assert copy.read_text() == readme.read_text(), (
        f"{paper}/README.md differs from its results/ tables; run make reproduce-{paper} and "
        f"make bench-{paper}")
