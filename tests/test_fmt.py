"""Numbers in tables: short, with units, and never a misleading zero."""

import pytest

from orchestrator import fmt


@pytest.mark.parametrize("seconds, shown", [(0.00015, "<0.1s"), (0.04, "<0.1s"), (0.1, "0.1s"), (7.25, "7.2s"),
                                            (59.9, "59.9s"), (90, "1.5m"), (5400, "1.5h"), (3 * 86400, "3.0d")])
def test_durations_keep_short_runs_visible(seconds, shown):
    assert fmt.duration(seconds) == shown


def test_a_plain_table_aligns_its_columns_and_styles_cells():
    text = fmt.table_text(("name", "n"), [("a", "1"), ("long name", "22")], right={"n"}, title="T",
                          style_of=lambda column, cell: "red" if cell == "22" else None)
    assert text.plain.splitlines() == ["T", "name        n", "---------  --", "a           1", "long name  22"]
    assert any(span.style == "red" for span in text.spans)
