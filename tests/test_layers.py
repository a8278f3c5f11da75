"""The layer rule of docs/architecture.md, checked on the source: no import climbs a layer."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import check_layers  # noqa: E402


def test_no_import_climbs_a_layer():
    assert check_layers.problems() == []


def test_a_climbing_import_is_found(tmp_path):
    (tmp_path / "dsu" / "families").mkdir(parents=True)
    (tmp_path / "dsu" / "__init__.py").write_text("")
    (tmp_path / "dsu" / "families" / "__init__.py").write_text("from ..jobs import outputs\nfrom .. import errors\n")
    assert check_layers.problems(tmp_path) == ["dsu/families/__init__.py:1: families (layer 6) imports dsu.jobs "
                                               "(layer 11)"]


def test_the_architecture_page_shows_the_checked_table():
    assert check_layers.table() in (ROOT / "docs" / "architecture.md").read_text()
