"""Reading the small delimited tables of the classify commands (species.tsv, sequence CSV/TSV).

    path -> read_table_text (bytes -> UTF-8 text, BOM dropped) -> parse_table (csv) -> header, rows

Both steps turn the standard library's failures (UnicodeDecodeError, csv.Error such as an
over-long quoted field) into TableError naming the file and line, so a malformed table is
reported like any other bad input instead of as a traceback.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .errors import TableError

_MAX_FIELD = 2**31 - 1  # csv's C parser stores the limit in a C long


def read_table_text(path: str | os.PathLike) -> str:
    """The whole table as text. UTF-8, with a leading byte-order mark dropped (spreadsheet programs
    write one, and it would otherwise glue itself to the first column name)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        raise TableError(
            f"{path}:{lineno}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the table as UTF-8 CSV/TSV"
        ) from err


def parse_table(path: str | os.PathLike, text: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(stripped header, [(line number, {column: stripped value})]) of a delimited table.

    Cells beyond the header are dropped and missing cells read as "", so callers only check
    the values. Raises TableError naming the line where csv gives up.
    """
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    rows = []
    # csv refuses fields over 128 KiB by default, but a sequence cell may hold a whole
    # long-range example; the limit is process-wide, so it is put back afterwards
    limit = csv.field_size_limit(_MAX_FIELD)
    try:
        header = [h.strip() for h in reader.fieldnames or []]
        for raw in reader:
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            rows.append((reader.line_num, row))
    except csv.Error as err:
        raise TableError(f"{path}:{reader.line_num}: malformed table: {err}") from err
    finally:
        csv.field_size_limit(limit)
    return header, rows
