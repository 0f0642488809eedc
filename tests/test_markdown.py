"""markdown_table: the one table writer; both rules byte for byte, as the committed reports have them."""

import pytest

from oloraplus.markdown import markdown_table


def test_bare_rule_without_alignment():
    assert markdown_table(["a", "b"], [[1, 2.5], ["x", None]]) == "| a | b |\n|---|---|\n| 1 | 2.5 |\n| x | None |"


def test_aligned_rule_and_an_empty_first_header_cell():
    assert markdown_table(["", "n"], [["row", 3]], align="lr") == "|  | n |\n| --- | ---: |\n| row | 3 |"
    assert markdown_table(["h"], [], align="l") == "| h |\n| --- |"


@pytest.mark.parametrize("align", ["l", "lrl", "lc"])
def test_alignment_needs_one_l_or_r_per_column(align):
    with pytest.raises(ValueError, match="one of l/r per column"):
        markdown_table(["a", "b"], [], align=align)
