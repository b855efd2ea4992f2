from pathlib import Path

from dsexport.api import refdoc


def test_committed_reference_matches_the_models() -> None:
    assert Path("docs/resources.md").read_text() == refdoc.render(), "run `make crds`"


def test_reference_lists_every_rule_message() -> None:
    text = refdoc.render()
    assert "- `spec`: exactly one backend block must be set" in text
    assert "- `spec.datasets[].schedule`: interval is only allowed when frequency is hourly" in text
    assert "| `spec.format.maxFileSize` | integer or string |" in text
