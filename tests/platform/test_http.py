"""HTTP plumbing: formula-safe CSV cells, canonical UUIDs."""

import pytest

from service.platform.http import formula_safe, parse_uuid


@pytest.mark.parametrize(
    "cell",
    [
        "=1+1",
        " =1+1",
        "\u00a0=1+1",
        "\u200b=1+1",
        "\ufeff=1+1",
        "\uff1d1+1",
        "'=1+1",
        '"=1+1',
        "  +1",
        "-2+3",
        "@SUM(A1)",
        "\t=1",
        "\r=1",
    ],
)
def test_cells_that_a_spreadsheet_would_evaluate_get_a_quote_first(cell):
    assert formula_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["Ana", "1+1", "a=b", "", "ana@example.com", " hello"])
def test_plain_cells_are_kept_as_they_are(cell):
    assert formula_safe(cell) == cell


def test_booleans_are_written_as_json_says_them():
    assert (formula_safe(True), formula_safe(False), formula_safe(None)) == ("true", "false", "")


@pytest.mark.parametrize(
    "text",
    [
        "urn:uuid:7d444840-9dc0-11d1-b245-5ffdce74fad2",
        "{7d444840-9dc0-11d1-b245-5ffdce74fad2}",
        "7d4448409dc011d1b2455ffdce74fad2",
        "7d444840-9dc0-11d1-b245-5ffdce74fad2\n",
    ],
)
def test_only_the_canonical_uuid_spelling_is_accepted(text):
    with pytest.raises(ValueError):
        parse_uuid(text)
