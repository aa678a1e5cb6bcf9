"""Database URLs: raw special characters in a password, and a password never shown.

The passwords are made of Cyrillic letters around the special characters, letters that
appear nowhere else, so "no password character is shown" is a plain assertion.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from totes_ingest.local.dburl import redact, settings_from_url

pytestmark = pytest.mark.unit

SECRET_LETTERS = "жыщ"


def shows_no_password(text: str) -> bool:
    return not any(letter in text for letter in SECRET_LETTERS)


@pytest.mark.parametrize("special", ["#", "/", "?", "@", ":", "#/?@:"])
def test_a_raw_special_character_in_the_password_is_parsed(special: str) -> None:
    password = f"жы{special}щ"
    url = f"postgresql://ingest:{password}@db.example.com:6543/totesys"

    assert settings_from_url(url) == {
        "user": "ingest",
        "password": password,
        "database": "totesys",
        "host": "db.example.com",
        "port": 6543,
    }
    assert redact(url) == "postgresql://ingest:***@db.example.com:6543/totesys"


def test_a_percent_encoded_password_still_works() -> None:
    password = "ж#/?@:%щ"
    url = f"postgresql://ingest:{quote(password, safe='')}@db/totesys"

    assert settings_from_url(url)["password"] == password
    assert redact(url) == "postgresql://ingest:***@db/totesys"


def test_a_raw_password_works_with_a_unix_socket_too() -> None:
    url = "postgresql://ingest:ж@/?щ@:5433/totesys?host=/run/postgresql"

    settings = settings_from_url(url)

    assert settings["password"] == "ж@/?щ"
    assert settings["unix_sock"] == "/run/postgresql/.s.PGSQL.5433"
    assert redact(url) == "postgresql://ingest:***@:5433/totesys?host=/run/postgresql"


def test_a_url_without_a_password_is_shown_as_it_is() -> None:
    url = "postgresql://ingest@db:5432/totesys?host=db"

    assert redact(url) == url
    assert settings_from_url(url)["password"] == ""


def test_a_password_in_the_query_is_masked() -> None:
    url = "postgresql://ingest@db/totesys?sslmode=require&password=жыщ"

    assert redact(url) == "postgresql://ingest@db/totesys?sslmode=require&password=***"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ingest:жы#щ@db:port/totesys",  # the port is not a number
        "postgresql://ingest:жы/щ@db:99999/totesys",  # the port is out of range
        "postgresql://ingest:жы?щ@[::1/totesys",  # a broken IPv6 host
        "mysql://ingest:жы@щ@db/totesys",  # another scheme
        "postgresql:/ingest:жы#щ@db/totesys",  # one slash: no scheme
        "ingest:жы@щ@db/totesys",  # no scheme at all
        "host=db user=ingest password=жы@щ dbname=totesys",  # a libpq keyword string
        "postgresql://ingest:жыщ",  # "@host" forgotten: reads as a host and a port
        "postgresql://ingest:жы/щ",
    ],
)
def test_a_url_that_cannot_be_parsed_never_shows_its_password(url: str) -> None:
    with pytest.raises(ValueError, match=r"must start with|host|port") as error:
        settings_from_url(url)

    assert shows_no_password(str(error.value))
    assert shows_no_password(redact(url))


def test_an_unparseable_url_keeps_what_cannot_be_a_password() -> None:
    assert redact("postgresql://ingest:жы#щ@db:port/totesys") == (
        "postgresql://ingest:***@db:port/totesys"
    )
    assert redact("mysql://ingest:ж@db/totesys") == "mysql://ingest:***@db/totesys"
    assert redact("postgresql://ingest:жыщ") == "postgresql://***"
    assert redact("host=db password=жыщ") == "***"
