"""Who is asking: bearer tokens (the API), signed session cookies and their CSRF tokens (the
pages), the rule of who may change what, and the log-in rate limit.

Sessions are signed with HMAC-SHA256 over the secret key (stdlib only). A session names its
token by a fingerprint, so removing a token from the config ends every session made with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from collector.config import Config, Crew

__all__ = [
    "MIN_SECRET_CHARS",
    "SESSION_SECONDS",
    "LoginLimiter",
    "Principal",
    "Session",
    "Sessions",
    "Tokens",
    "may_change_sector",
]

MIN_SECRET_CHARS: Final = 16
SESSION_SECONDS: Final = 12 * 3600  # one long shift on a shared tablet


@dataclass(frozen=True, slots=True)
class Principal:
    """A person with a token: a crew member (`crew` set) or a worker (`crew` None)."""

    name: str
    crew: Crew | None

    @property
    def role(self) -> str:
        return "worker" if self.crew is None else "crew"


def may_change_sector(who: Principal, sector: str) -> bool:
    """A crew changes only tickets of its own sectors (no sectors listed: all of them)."""
    return who.crew is not None and (not who.crew.sectors or sector in who.crew.sectors)


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """The tokens the config gives: token → (person's name, crew id or None for a worker)."""

    def __init__(self, config: Config, tokens: Mapping[str, tuple[str, str | None]]) -> None:
        crews = {c.id: c for c in config.maintenance.crews}
        self._by_fingerprint: dict[str, Principal] = {}
        for token, (name, crew_id) in tokens.items():
            if len(token) < MIN_SECRET_CHARS:
                raise ValueError(
                    f"the token of {name!r} is {len(token)} characters long; "
                    f"give tokens of at least {MIN_SECRET_CHARS}"
                )
            if not name.strip():
                raise ValueError("every token needs the name of the person it belongs to")
            crew = None
            if crew_id is not None:
                crew = crews.get(crew_id)
                if crew is None:
                    known = ", ".join(sorted(crews)) or "none"
                    raise ValueError(
                        f"the token of {name!r} names crew {crew_id!r}, which is not among "
                        f"maintenance.crews ({known})"
                    )
            self._by_fingerprint[_fingerprint(token)] = Principal(name.strip(), crew)

    def by_token(self, token: str) -> Principal | None:
        return self._by_fingerprint.get(_fingerprint(token))

    def by_fingerprint(self, fingerprint: str) -> Principal | None:
        return self._by_fingerprint.get(fingerprint)

    @staticmethod
    def fingerprint(token: str) -> str:
        return _fingerprint(token)


@dataclass(frozen=True, slots=True)
class Session:
    """A browser's session: `sid` keys its CSRF token; `who` the fingerprint of its token."""

    sid: str
    who: str | None
    expires: float


class Sessions:
    """Signs and checks session cookies, and derives each session's CSRF token."""

    def __init__(self, secret_key: str, clock: Callable[[], float]) -> None:
        self._key = hashlib.sha256(b"aguante-session:" + secret_key.encode()).digest()
        self._csrf_key = hashlib.sha256(b"aguante-csrf:" + secret_key.encode()).digest()
        self._clock = clock

    def new(self, who: str | None) -> Session:
        return Session(secrets.token_urlsafe(18), who, self._clock() + SESSION_SECONDS)

    def dump(self, session: Session) -> str:
        body = json.dumps({"sid": session.sid, "who": session.who, "exp": session.expires})
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}"

    def load(self, cookie: str | None) -> Session | None:
        """The session of a cookie, or None when it is missing, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            session = Session(str(data["sid"]), data["who"], float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < self._clock() or not (
            session.who is None or isinstance(session.who, str)
        ):
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        return (
            session is not None
            and token is not None
            and hmac.compare_digest(token, self.csrf_token(session))
        )

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()


class LoginLimiter:
    """At most `failures` wrong tokens per `window_s` from one client address; then refused
    until the oldest failure leaves the window."""

    def __init__(
        self, clock: Callable[[], float], *, failures: int = 5, window_s: float = 60.0
    ) -> None:
        self._clock = clock
        self._failures = failures
        self._window_s = window_s
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str) -> deque[float]:
        now = self._clock()
        seen = self._seen.setdefault(address, deque())
        while seen and seen[0] <= now - self._window_s:
            seen.popleft()
        return seen

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address)) >= self._failures

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(self._clock())
            if len(self._seen) > 10_000:  # many addresses: forget those with nothing recent
                for key in [k for k, v in self._seen.items() if not v]:
                    del self._seen[key]
