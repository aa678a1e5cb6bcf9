"""The Glue Data Catalog kept by CommitTable (moto's Glue), through the real handlers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import boto3
import pytest

from tests.conftest import BUCKET, REGION
from tests.integration.test_handlers import Context
from totes_ingest import config
from totes_ingest.glue_catalog import GlueCatalog, forget_synced
from totes_ingest.handlers import commit_table, get_last_ingest_time, query_to_parquet
from totes_ingest.lake_views import TableColumns, parse_presto_view_text
from totes_ingest.local.dburl import Connect

pytestmark = pytest.mark.integration

DATABASE = "totes_lake"
GADGET = """
CREATE TABLE gadget (
    gadget_id serial PRIMARY KEY,
    ref uuid NOT NULL DEFAULT gen_random_uuid(),
    price numeric(10, 2),
    opens time,
    last_updated timestamp NOT NULL DEFAULT now()
)
"""


@pytest.fixture
def glue(db_secret: dict[str, Any], s3: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    client = boto3.client("glue", region_name=REGION)
    client.create_database(DatabaseInput={"Name": DATABASE})
    monkeypatch.setenv(config.GLUE_DATABASE, DATABASE)
    monkeypatch.setenv(config.END_TIME_SAFETY_MARGIN_SECONDS, "0")
    forget_synced()  # a fresh Lambda process
    return client


@pytest.fixture
def source(db_secret: dict[str, Any], connect: Connect) -> Any:
    conn = connect(db_secret)
    conn.run("SET TimeZone = 'UTC'")
    conn.run(GADGET)
    yield conn
    conn.close()


def _ingest(source: Any, table: str = "gadget") -> dict[str, Any]:
    """One window of ``table`` through GetLastIngestTime, QueryToParquet, CommitTable."""
    ((now,),) = source.run("SELECT clock_timestamp() AT TIME ZONE 'UTC'")
    window = {
        "table": table,
        "end_time": f"{now:%Y-%m-%d %H:%M:%S.%f}",
        "run_id": f"run-{uuid.uuid4().hex}",
        "execution": "test",
        "source_timezone": "UTC",
        "hold": None,
    }
    found = get_last_ingest_time.lambda_handler(window, Context())
    staged = query_to_parquet.lambda_handler(found, Context())
    assert staged["rows"] > 0
    written: dict[str, Any] = commit_table.lambda_handler(staged, Context())
    assert written["status"] == "written"
    return written


def _table(glue: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = glue.get_table(DatabaseName=DATABASE, Name=name)["Table"]
    return found


def _columns(table: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["Name"], c["Type"]) for c in table["StorageDescriptor"]["Columns"]]


def test_the_first_commit_creates_the_table_its_tombstones_and_its_current_view(
    glue: Any, source: Any
) -> None:
    source.run("INSERT INTO gadget (price, opens) VALUES (1.50, '09:30'), (NULL, NULL)")
    written = _ingest(source)
    day = datetime.strptime(written["key"].split("/", 1)[1][:10], "%Y/%m/%d")

    raw = _table(glue, "gadget")
    assert raw["TableType"] == "EXTERNAL_TABLE"
    assert _columns(raw) == [
        ("gadget_id", "int"),
        ("ref", "string"),
        ("price", "decimal(10,2)"),
        ("opens", "string"),
        ("last_updated", "timestamp"),
    ]
    assert raw["PartitionKeys"] == [{"Name": "ingest_day", "Type": "string"}]
    storage = raw["StorageDescriptor"]
    assert storage["Location"] == f"s3://{BUCKET}/gadget/"
    assert storage["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")
    assert (
        raw["Parameters"]
        | {
            "projection.enabled": "true",
            "projection.ingest_day.type": "date",
            "projection.ingest_day.format": "yyyy/MM/dd",
            "projection.ingest_day.range": f"{day:%Y/%m/%d},NOW",
            "projection.ingest_day.interval": "1",
            "projection.ingest_day.interval.unit": "DAYS",
            "storage.location.template": f"s3://{BUCKET}/gadget/${{ingest_day}}/",
        }
        == raw["Parameters"]
    )
    # the file's key matches the projection's template
    assert written["key"].startswith(f"gadget/{day:%Y/%m/%d}/")

    tombstones = _table(glue, "gadget_tombstones")
    assert _columns(tombstones) == [
        ("gadget_id", "int"),
        ("deleted_at", "timestamp"),
        ("last_version", "timestamp"),
    ]
    assert tombstones["StorageDescriptor"]["Location"] == f"s3://{BUCKET}/_tombstones/gadget/"

    view = _table(glue, "gadget_current")
    assert view["TableType"] == "VIRTUAL_VIEW"
    assert view["Parameters"]["presto_view"] == "true"
    body = parse_presto_view_text(view["ViewOriginalText"])
    assert body["catalog"] == "awsdatacatalog"
    assert body["schema"] == DATABASE
    assert body["columns"] == [
        {"name": "gadget_id", "type": "integer"},
        {"name": "ref", "type": "varchar"},
        {"name": "price", "type": "decimal(10,2)"},
        {"name": "opens", "type": "varchar"},
        {"name": "last_updated", "type": "timestamp"},
    ]
    assert '"gadget_tombstones"' in str(body["originalSql"])


@pytest.fixture
def glue_calls(glue: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Glue operations CommitTable calls, in order."""
    calls: list[str] = []

    def recording_client() -> Any:
        client = boto3.client("glue", region_name=REGION)
        client.meta.events.register(
            "before-call.glue.*", lambda model, **_: calls.append(model.name)
        )
        return client

    monkeypatch.setattr(commit_table, "glue_client", recording_client)
    return calls


def test_a_commit_with_unchanged_columns_makes_no_glue_call_in_a_warm_process(
    glue_calls: list[str], source: Any
) -> None:
    source.run("INSERT INTO gadget (price) VALUES (1)")
    _ingest(source)
    assert glue_calls == ["GetTable", "CreateTable", "CreateTable", "CreateTable"]
    glue_calls.clear()
    source.run("INSERT INTO gadget (price) VALUES (2)")
    _ingest(source)
    assert glue_calls == []
    # a cold process checks once, and writes nothing
    forget_synced()
    source.run("INSERT INTO gadget (price) VALUES (3)")
    _ingest(source)
    assert glue_calls == ["GetTable"]


def test_an_added_column_is_appended_to_the_table_and_the_view(
    glue: Any, glue_calls: list[str], source: Any
) -> None:
    source.run("INSERT INTO gadget (price) VALUES (1)")
    _ingest(source)
    source.run("ALTER TABLE gadget ADD COLUMN colour text")
    source.run("INSERT INTO gadget (price, colour) VALUES (2, 'red')")
    glue_calls.clear()
    _ingest(source)
    assert glue_calls == ["GetTable", "UpdateTable", "UpdateTable"]
    assert _columns(_table(glue, "gadget"))[-1] == ("colour", "string")
    view = parse_presto_view_text(_table(glue, "gadget_current")["ViewOriginalText"])
    assert view["columns"][-1] == {"name": "colour", "type": "varchar"}  # type: ignore[index]
    assert 'v."colour"' in str(view["originalSql"])
    # the projection is kept
    assert _table(glue, "gadget")["Parameters"]["projection.enabled"] == "true"


def test_a_dropped_or_retyped_column_warns_counts_and_keeps_the_glue_table_readable(
    glue: Any,
    source: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    source.run("INSERT INTO gadget (price) VALUES (1)")
    _ingest(source)
    before = _table(glue, "gadget")
    source.run("ALTER TABLE gadget DROP COLUMN opens")
    source.run("ALTER TABLE gadget ALTER COLUMN price TYPE bigint")
    source.run("INSERT INTO gadget (price) VALUES (2)")
    _ingest(source)
    (warning,) = [r for r in caplog.records if r.getMessage().startswith("Columns dropped")]
    assert warning.levelname == "WARNING"
    assert (warning.dropped, warning.retyped, warning.table) == (["opens"], ["price"], "gadget")
    assert '"CatalogSchemaConflict":[1.0]' in capsys.readouterr().out
    assert _columns(_table(glue, "gadget")) == _columns(before)


def test_glue_refusing_fails_the_commit_step_naming_the_table(
    db_secret: dict[str, Any], s3: Any, source: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a Glue database that does not exist
    monkeypatch.setenv(config.GLUE_DATABASE, "no_such_database")
    monkeypatch.setenv(config.END_TIME_SAFETY_MARGIN_SECONDS, "0")
    forget_synced()
    source.run("INSERT INTO gadget (price) VALUES (1)")
    with pytest.raises(Exception, match=r"Glue .* failed: EntityNotFoundException.*table=gadget"):
        _ingest(source)


def test_a_table_without_a_key_gets_its_raw_table_only(glue: Any) -> None:
    columns = TableColumns("log", (("line", "string"), ("last_updated", "timestamp")), ())
    outcome = GlueCatalog(glue, DATABASE, BUCKET).sync(columns, lambda: datetime(2024, 1, 1))
    assert outcome == "created"
    names = [t["Name"] for t in glue.get_tables(DatabaseName=DATABASE)["TableList"]]
    assert names == ["log"]
