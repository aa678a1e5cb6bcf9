"""The re-read's comparison bounds and empty reads: what pyarrow makes, without pandas."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from totes_ingest.reread import _scalar, _whole

pytestmark = pytest.mark.unit

MOMENTS = [
    datetime(2024, 5, 6, 7, 8, 9, 123456),
    datetime(1969, 12, 31, 23, 59, 59, 999999),
    datetime(2200, 1, 1),
]


@pytest.mark.parametrize("unit", ["us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC"])
@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_a_bound_is_the_scalar_pyarrow_makes_of_the_moment(
    unit: str, tz: str | None, moment: datetime
) -> None:
    arrow_type = pa.timestamp(unit, tz=tz)

    expected = pa.scalar(moment.replace(tzinfo=UTC) if tz else moment, type=arrow_type)

    assert _scalar(moment, arrow_type).equals(expected)


def test_making_a_bound_imports_no_pandas() -> None:
    code = (
        "import sys\nfrom datetime import datetime\nimport pyarrow as pa\n"
        "from totes_ingest.reread import _scalar\n"
        "_scalar(datetime(2024, 1, 1), pa.timestamp('us', tz='UTC'))\n"
        "print('pandas' in sys.modules)\n"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert ran.stdout == "False\n", ran.stderr


def test_a_column_of_no_chunk_is_an_empty_array_of_its_type() -> None:
    column = pa.chunked_array([], pa.timestamp("us"))

    assert _whole(column).equals(pa.array([], pa.timestamp("us")))


def test_an_empty_column_imports_no_pandas() -> None:
    code = (
        "import sys\nimport pyarrow as pa\nfrom totes_ingest.reread import _whole\n"
        "_whole(pa.chunked_array([], pa.string()))\n"
        "print('pandas' in sys.modules)\n"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert ran.stdout == "False\n", ran.stderr
