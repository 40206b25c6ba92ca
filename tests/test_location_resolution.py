"""``config.data_location``: flags and environment to one Location, with the precedence of the
seed's flags (``--queue-dir`` …) kept; and the canonical text of odd paths round-trips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracemind.backend.location import Location, data_location
from tracemind.errors import UsageError


def _dirs(location: Location) -> tuple[str, str, str]:
    return location.file_dirs()


def _under(root: Path) -> tuple[str, str, str]:
    return (str(root / "queue"), str(root / "idempotency"), str(root / "dlq"))


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    return here


def test_without_anything_the_data_root_is_data_under_the_current_directory(cwd: Path) -> None:
    assert _dirs(data_location(env={})) == _under(cwd / "data")
    assert str(data_location(env={})) == f"file://{cwd / 'data'}"


def test_tm_data_dir_names_the_root(cwd: Path, tmp_path: Path) -> None:
    env = {"TM_DATA_DIR": str(tmp_path / "root")}
    assert _dirs(data_location(env=env)) == _under(tmp_path / "root")
    # (a relative one is taken from the current directory)
    assert _dirs(data_location(env={"TM_DATA_DIR": "rel"})) == _under(cwd / "rel")


def test_tm_queue_url_beats_tm_data_dir(cwd: Path, tmp_path: Path) -> None:
    env = {"TM_DATA_DIR": str(tmp_path / "root"), "TM_QUEUE_URL": f"file://{tmp_path / 'url'}"}
    assert _dirs(data_location(env=env)) == _under(tmp_path / "url")


def test_the_queue_url_flag_beats_tm_queue_url(cwd: Path, tmp_path: Path) -> None:
    env = {"TM_QUEUE_URL": f"file://{tmp_path / 'env'}"}
    location = data_location(f"file://{tmp_path / 'flag'}", env=env)
    assert _dirs(location) == _under(tmp_path / "flag")


@pytest.mark.parametrize(
    "base",
    [
        {},
        {"TM_DATA_DIR": "/srv/root"},
        {"TM_QUEUE_URL": "file:///srv/url"},
    ],
    ids=["default", "TM_DATA_DIR", "TM_QUEUE_URL"],
)
def test_each_directory_variable_beats_the_location_for_its_directory_only(
    cwd: Path, base: dict[str, str]
) -> None:
    root = data_location(env=base).file_dirs()
    env = {**base, "TM_DLQ_DIR": "/elsewhere/dead"}
    queue, idempotency, dlq = data_location(env=env).file_dirs()
    assert (queue, idempotency) == root[:2]
    assert dlq == "/elsewhere/dead"


def test_each_directory_flag_beats_its_variable_and_the_location(cwd: Path) -> None:
    env = {
        "TM_QUEUE_URL": "file:///srv/url",
        "TM_QUEUE_DIR": "/env/queue",
        "TM_IDEMPOTENCY_DIR": "/env/keys",
        "TM_DLQ_DIR": "/env/dead",
    }
    location = data_location(
        "file:///srv/flag", queue_dir="/flag/queue", dlq_dir="relative/dead", env=env
    )
    # (a flag beats its variable, which beats the location: even the flag's --queue-url)
    assert location.file_dirs() == ("/flag/queue", "/env/keys", str(cwd / "relative" / "dead"))
    # and the three directories are one location string that reads back the same
    assert Location.parse(str(location)).file_dirs() == location.file_dirs()


def test_a_location_url_with_directory_keys_is_honoured(cwd: Path) -> None:
    text = "file:///srv/root?dlq=/mnt/dead%20letters"
    location = data_location(env={"TM_QUEUE_URL": text})
    assert location.file_dirs() == ("/srv/root/queue", "/srv/root/idempotency", "/mnt/dead letters")


def test_a_redis_location_stands_alone(cwd: Path) -> None:
    url = "redis://u:secret@127.0.0.1:6379/2?prefix=tm"
    location = data_location(env={"TM_QUEUE_URL": url, "TM_DATA_DIR": "/ignored"})
    assert location.scheme == "redis" and str(location) == url
    assert "secret" not in location.redacted()


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        ({"queue_dir": "/q"}, {}, "--queue-dir"),
        ({"dlq_dir": "/d"}, {}, "--dlq-dir"),
        ({}, {"TM_IDEMPOTENCY_DIR": "/i"}, "TM_IDEMPOTENCY_DIR"),
    ],
)
def test_a_directory_setting_with_a_redis_location_is_one_line(
    cwd: Path, flags: dict[str, str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(UsageError) as raised:
        data_location("redis://u:secret@127.0.0.1/0", env=env, **flags)
    message = str(raised.value)
    assert named in message and "\n" not in message and "secret" not in message


@pytest.mark.parametrize("url", ["nothing", "file://relative/path", "ftp://host/x"])
def test_a_bad_location_is_a_usage_error(cwd: Path, url: str) -> None:
    with pytest.raises(UsageError, match="queue location"):
        data_location(env={"TM_QUEUE_URL": url})


ODD_NAMES = [
    "with space",
    "per%cent",
    "q?mark&amp=eq",
    "hash#tag",
    "ünïcödé",
    "semi;colon,comma",
    os.fsdecode(b"not-utf8-\xff"),
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_paths_round_trip_through_the_location_text(tmp_path: Path, name: str) -> None:
    root = f"{tmp_path}/{name}"
    dirs = (f"{root}/queue", f"/other/{name}/keys", f"{root}/dlq")
    for location in (Location.for_root(root), Location.for_file_dirs(*dirs)):
        text = str(location)
        assert text.isprintable() and " " not in text  # (one word: safe in an environment)
        assert Location.parse(text).file_dirs() == location.file_dirs()
    assert Location.for_file_dirs(*dirs).file_dirs() == dirs
    # and the resolution of the flags gives the same location as the text
    via_env = data_location(env={"TM_QUEUE_URL": str(Location.for_root(root))})
    assert via_env.file_dirs() == tuple(f"{root}/{n}" for n in ("queue", "idempotency", "dlq"))


def test_a_redacted_location_reads_back_without_its_password() -> None:
    location = Location.parse("rediss://user:p%40ss@cache.example:6380/3?prefix=tm:orders")
    recorded = Location.parse_redacted(location.redacted())
    assert recorded.redis_parts() == {**location.redis_parts(), "password": None}
    assert recorded.password({"TM_REDIS_PASSWORD": "from-env"}) == "from-env"


PLAIN_REDIS_URLS = [
    "redis://localhost:6379/0",
    "redis://127.0.0.1:54195/0",
    "rediss://Cache.Example:6380/15?prefix=tm:orders",
    "REDIS://H:1/2",
    "redis://h",
    "redis://h/",
    "redis://h//1",
    "redis://h/00?prefix=a_b-c.d",
    "redis://h:65535",
]
NOT_PLAIN_REDIS_URLS = [
    "redis://user:secret@h:1/0",
    "redis://h:0/1",
    "redis://h:/1",
    "redis://h:70000/0",
    "redis://[::1]:6379/0",
    "redis://h/0?prefix=a&prefix=b",
    "redis://h/0?prefix=",
    "redis://h/0?prefix=a%3Ab",
    "redis://h/x",
    "redis://:1/0",
]


@pytest.mark.parametrize("text", PLAIN_REDIS_URLS + NOT_PLAIN_REDIS_URLS)
def test_the_plain_redis_url_reads_as_urllib_reads_it(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracemind.backend import location as module

    # Given the parts read by hand (None: left to urllib)
    plain = module._plain_redis_parts(text)
    assert (plain is not None) == (text in PLAIN_REDIS_URLS)
    # When urllib reads the same text
    monkeypatch.setattr(module, "_plain_redis_parts", lambda _text: None)
    try:
        by_urllib: object = module._redis_parts(text)
    except UsageError as exc:
        by_urllib = exc
    # Then a plain URL has the same parts either way
    if plain is not None:
        assert plain == by_urllib
