"""Where an annotation store lives: a file path (SQLite) or ``postgresql://USER@HOST[:PORT]/DB``; parsing,
checking and printing a location without its password. Pure Python: imports neither an engine nor the store."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

#: Matches ``scheme://`` at the start of a store location (a URL rather than a file path).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
POSTGRES_SCHEMES = ("postgresql", "postgres")
STORE_URL_FORM = "postgresql://USER@HOST[:PORT]/DB"


class LocationError(ValueError):
    """A store location that cannot be used as written (a URL without a database, an unknown scheme)."""


def store_location(text: str) -> str:
    """A store location typed into a path field: a URL whose ``//`` a path type collapsed
    (``Path("postgresql://a@h/db")`` is ``postgresql:/a@h/db``) gets it back; anything else is returned as it is."""
    text = str(text).strip()
    collapsed = re.match(r"^(postgresql|postgres):/(?!/)", text, re.IGNORECASE)
    return f"{collapsed.group(1)}://{text[collapsed.end():]}" if collapsed else text


def redacted(location: Any) -> str:
    """A store location for messages: a URL's password left out."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/]+):[^@/]*@", r"\1@", str(location).strip())


def is_url(location: Any) -> bool:
    """Whether ``location`` names a store by URL (``postgresql://...``) rather than by file path."""
    return isinstance(location, str) and bool(_URL.match(location.strip()))


class StoreURL(str):
    """``store.path`` of a server store: the URL without its password, a str; ``name`` is the database's name (as a
    file store's ``path.name`` is the file's), for the callers that label a store by it."""

    database = ""

    @property
    def name(self) -> str:
        return self.database


@dataclass(frozen=True)
class PostgresLocation:
    """A parsed ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAM=...]``. ``url`` is what libpq is given;
    ``display`` is the same without the password (for messages, ``store.path`` and logs)."""

    url: str
    display: str
    user: Optional[str]
    host: str
    port: Optional[int]
    database: str

    @property
    def where(self) -> str:
        """HOST:PORT (or the socket folder) for messages."""
        return f"{self.host}:{self.port}" if self.port else self.host


def parse_postgres_url(text: str) -> PostgresLocation:
    """Check and split a PostgreSQL store URL; LocationError (with an example) when it names no database."""
    text = text.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in POSTGRES_SCHEMES:
        raise LocationError(f"{text}: an annotation store is a file path or {STORE_URL_FORM} (scheme "
                            f"{parts.scheme!r} is not supported)")
    try:
        port = parts.port
    except ValueError:
        raise LocationError(f"{_without_password(parts)}: the port must be a number, e.g. "
                            f"postgresql://{parts.username or 'alice'}@{parts.hostname or 'db.example.org'}:5432/"
                            "nerveseg") from None
    query = parse_qs(parts.query)
    database = unquote(parts.path.lstrip("/")) or (query.get("dbname") or [""])[0]
    host = parts.hostname or (query.get("host") or [""])[0] or "the local PostgreSQL socket"
    if not database or "/" in database:
        example = (f"postgresql://{parts.username or 'alice'}@{parts.hostname or 'db.example.org'}"
                   f"{':' + str(port) if port else ':5432'}/nerveseg")
        what = "names no database" if not database else f"has a database name with '/' ({database!r})"
        raise LocationError(f"{_without_password(parts)} {what}: write the database after the host, e.g. {example} "
                            f"(form {STORE_URL_FORM})")
    return PostgresLocation(url=text, display=_without_password(parts), user=parts.username, host=host, port=port,
                            database=database)


def _without_password(parts) -> str:
    if parts.password is None:
        return urlunsplit(parts)
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}"))
