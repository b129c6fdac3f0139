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


# Every character formula_safe skips or looks at, alone, before a formula start and before plain text: PostgreSQL's
# csv_cell (the exports COPY writes) must answer exactly as the Python guard does.
_SPACES = [chr(c) for c in range(0x110000) if chr(c).isspace()]
_CELLS = [
    prefix + body
    for prefix in ["", *_SPACES, *"'\"\u00a0\u200b\u200c\u200d\u2060\ufeff", " '", '\u200b "']
    for body in ["=1+1", "+1", "-2", "@SUM(A1)", "\uff1d1", "\uff0b1", "\uff0d1", "\uff201", "plain", "a=b", ""]
] + ["Ana", "ana@example.com", "1+1", "x\n=1", "\t", "\r", "\t=1"]


def test_the_sql_cell_guard_answers_as_formula_safe_for_every_skipped_character(owner_conn):
    answers = owner_conn.execute("select cell, csv_cell(cell) from unnest(%s::text[]) as cell", [_CELLS]).fetchall()
    for cell, guarded in answers:
        assert (guarded or "") == formula_safe(cell), repr(cell)
    assert owner_conn.execute("select csv_cell('')").fetchone()[0] is None  # COPY writes null as an empty cell
