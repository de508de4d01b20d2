"""--lake specs: the URL and libpq forms, and every way a password could sneak in is refused."""
from __future__ import annotations

import argparse

import pytest

from pipelines.config.lake_options import parse_partitions, writer_id
from pipelines.storage.lake_target import LakeSpecError, lake_from_env, parse_lake


def test_url_becomes_libpq_keywords():
    target = parse_lake("postgresql://cxj@db.example:5433/lake?sslmode=require", "/tmp/x/../lake-data")
    assert target.libpq == "host=db.example port=5433 user=cxj dbname=lake sslmode=require"
    assert target.attach_target == "ducklake:postgres:" + target.libpq
    assert target.data_path == "/tmp/lake-data/"


def test_libpq_form_and_quoting():
    target = parse_lake("postgres:dbname=lake host=/run/postgresql application_name='cxj writer'")
    assert target.libpq == "dbname=lake host=/run/postgresql application_name='cxj writer'"
    assert target.data_path is None


@pytest.mark.parametrize("spec", [
    "postgresql://cxj:secret@host/lake",
    "postgres://cxj:@host/lake",
    "postgresql://host/lake?password=secret",
    "postgres:dbname=lake password=secret",
    "postgres:dbname=lake PASSWORD='se cret'",
])
def test_passwords_are_refused(spec):
    with pytest.raises(LakeSpecError, match="password"):
        parse_lake(spec)


@pytest.mark.parametrize("spec, why", [
    ("sqlite:lake.db", "expected postgresql://"),
    ("postgresql://host", "names no database"),
    ("postgres:host=x", "names no database"),
    ("postgresql://host/lake?sslmode=x&evil=1", "not supported"),
    ("postgres:dbname=lake =x", "keyword=value"),
])
def test_unusable_specs_say_why(spec, why):
    with pytest.raises(LakeSpecError, match=why):
        parse_lake(spec)


def test_object_storage_data_paths_are_refused_not_ignored():
    with pytest.raises(LakeSpecError, match="folder path"):
        parse_lake("postgresql://h/lake", "s3://bucket/lake")


def test_environment(monkeypatch):
    monkeypatch.delenv("CXJ_LAKE", raising=False)
    assert lake_from_env() is None
    monkeypatch.setenv("CXJ_LAKE", "postgresql://h/lake")
    monkeypatch.setenv("CXJ_LAKE_DATA", "/srv/lake")
    assert lake_from_env() == parse_lake("postgresql://h/lake", "/srv/lake")


def test_partitions_and_writer_ids():
    assert parse_partitions("0,1") == {0, 1}
    assert parse_partitions("0-3,7") == {0, 1, 2, 3, 7}
    for bad in ("", "a", "3-1", "1,,2", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_partitions(bad)
    assert writer_id("w1.host-2") == "w1.host-2"
    for bad in ("", "w 1", "x" * 64, "'; DROP"):
        with pytest.raises(argparse.ArgumentTypeError):
            writer_id(bad)
