"""The store's own failures are errors a person can act on: a damaged, truncated, foreign or newer-schema file,
a full disk, a mistyped folder for `export`/`report`, and a single unreadable record row (skipped and counted,
never the end of a report)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mmsafe.cli.main import main
from mmsafe.config import RunConfig
from mmsafe.errors import StoreError
from mmsafe.runner import run
from mmsafe.store import STORE_FILE, Store
from mmsafe.types import Generation


def _run(out: Path, n: int = 3) -> Path:
    data = out.parent / "items.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "text": f"question {i}"}) + "\n" for i in range(n)))
    config = RunConfig.model_validate(
        {
            "name": "store",
            "models": [{"name": "scripted", "params": {"echo": True}}],
            "benchmarks": [{"name": "jsonl", "params": {"file": str(data)}}],
        }
    )
    run(config, out, progress=False)
    return out


@pytest.fixture()
def store_dir(tmp_path: Path) -> Path:
    return _run(tmp_path / "out")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b"this is a text file, not SQLite\n" * 64, "is not a readable mmsafe store .*file is not a database"),
        (lambda b: b[: len(b) // 2], "is not a readable mmsafe store .*malformed"),
        (lambda b: b[:100], "is not a readable mmsafe store .*malformed"),
    ],
    ids=["not-sqlite", "truncated-half", "truncated-header"],
)
def test_damaged_store_is_a_store_error(store_dir, damage, match):
    db = store_dir / STORE_FILE
    db.write_bytes(damage(db.read_bytes()))
    for open_store in (Store, Store.open_existing):
        with pytest.raises(StoreError, match=match):
            with open_store(store_dir) as s:  # some damage shows up only when the pages are read
                list(s.iter_records())


def test_damaged_store_is_one_line_in_the_cli(store_dir, capsys):
    (store_dir / STORE_FILE).write_bytes(b"\x00garbage" * 512)
    assert main(["report", str(store_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a readable mmsafe store" in err and "move it away" in err


def test_another_programs_database_is_refused_and_left_untouched(tmp_path):
    for name, ddl in [
        ("users", "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"),
        ("meta", "CREATE TABLE meta (k INTEGER, v BLOB)"),  # a table of the same name, other columns
    ]:
        d = tmp_path / name
        d.mkdir()
        db = sqlite3.connect(d / STORE_FILE)
        db.execute(ddl)
        db.commit()
        db.close()
        before = (d / STORE_FILE).read_bytes()
        with pytest.raises(StoreError, match=rf"is not an mmsafe store \(tables: {name}\)"):
            Store(d)
        with pytest.raises(StoreError, match="is not an mmsafe store"):
            Store.open_existing(d)
        assert (d / STORE_FILE).read_bytes() == before  # no mmsafe tables written into it


def test_a_newer_schema_names_both_versions(store_dir):
    with Store(store_dir) as s:
        s.set_meta("schema_version", "99")
    with pytest.raises(StoreError, match="store schema 99 is not the version this mmsafe reads \\(1\\)"):
        Store(store_dir)


def test_missing_folder_is_an_error_for_export_and_report_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "runs" / "typo"
    with pytest.raises(StoreError, match="no run folder at"):
        Store.open_existing(missing)
    assert main(["export", str(missing), "-o", str(tmp_path / "r.jsonl")]) == 2
    assert "no run folder at" in capsys.readouterr().err
    assert main(["report", str(missing)]) == 2
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert "no mmsafe store at" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.jsonl").exists()
    assert list((tmp_path / "empty").iterdir()) == []


def test_one_unreadable_record_is_skipped_counted_and_reported(store_dir, capsys):
    with sqlite3.connect(store_dir / STORE_FILE) as db:
        key = db.execute("SELECT key FROM records ORDER BY key LIMIT 1").fetchone()[0]
        db.execute("UPDATE records SET record = ? WHERE key = ?", ('{"key": "x", "from": "mmsafe 9"}', key))
        db.execute("UPDATE responses SET generation = '{' WHERE rowid = 1")  # a damaged cache entry
    with Store.open_existing(store_dir) as s:
        assert len(list(s.iter_records())) == 2
        assert list(s.unreadable) == [key]
    assert main(["report", str(store_dir)]) == 0
    summary = json.loads((store_dir / "summary.json").read_text())
    assert (summary["n_records"], summary["n_unreadable"], summary["unreadable"]) == (2, 1, [key])
    assert f"1 unreadable record(s) left out** (key `{key[:16]}…`)" in (store_dir / "report.md").read_text()
    assert main(["export", str(store_dir)]) == 0
    assert "2 records" in capsys.readouterr().out
    assert len((store_dir / "records.jsonl").read_text().splitlines()) == 2
    # the rerun answers the damaged cache entry again instead of failing every item
    _run(store_dir)
    with Store(store_dir) as s:
        assert s.count_records() == 3 and len(list(s.iter_records())) == 2


def test_full_disk_is_a_store_error_saying_to_free_space_and_loses_nothing(store_dir):
    with Store(store_dir) as s:
        n, cached = s.count_records(), s.count_responses()
        pages = s._db.execute("PRAGMA page_count").fetchone()[0]
        s._db.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own SQLITE_FULL, as on a full disk
        big = Generation(text="x" * 200_000)
        with pytest.raises(StoreError, match=r"disk full writing .*; free space and rerun the same command to resume"):
            s.put_responses([(f"k{i}", "m", big) for i in range(4)])
        assert (s.count_records(), s.count_responses()) == (n, cached)  # the transaction rolled back whole
        s.put_responses([("small", "m", Generation(text="ok"))])  # and the store still works
        assert s.get_responses(["small"])["small"].text == "ok"


def test_readonly_store_does_not_write(store_dir):
    with Store.open_existing(store_dir) as s:
        assert s.readonly and s.count_records() == 3
        with pytest.raises(StoreError, match="readonly"):
            s.set_meta("x", "y")


def test_a_store_is_shared_by_threads(tmp_path):
    """The runner's event-loop thread and a defense's worker threads use the run's store while the main
    thread writes records: every call from any thread lands, and transactions do not interleave."""
    from concurrent.futures import ThreadPoolExecutor

    with Store(tmp_path) as store:

        def cache(i: int) -> None:
            store.put_responses([(f"k{i}", "m", Generation(text=f"answer {i}"))])
            assert store.get_responses([f"k{i}"])[f"k{i}"].text == f"answer {i}"

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(cache, range(200)))
        assert store.count_responses() == 200
        assert store.done_keys("m", "b", "a", "d") == set()
