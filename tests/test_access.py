"""Access rules, pure: tokens and grants, origins, the handshake verdict, the rate gate."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meksd.access_config import AuthConfig, TokenConfig, access_policy
from meksd.core.access import (
    OPEN_GRANT,
    REFUSAL_REASONS,
    AccessPolicy,
    Admit,
    Grant,
    Handshake,
    Refuse,
    TokenEntry,
    admit,
    authenticate,
    hash_token,
    is_loopback_host,
    is_loopback_origin,
    normalize_origin,
    presented_token,
)
from meksd.core.limits import RateLimit, new_gate, pass_message
from meksd.runtime.access import grant_survives
from tests.strategies import PROPERTY

ALICE_OPS = "meks_alice-ops-secret"
VIEWER = "meks_viewer-secret"


def entry(
    token: str, name: str, role: str = "operator", rooms: set[str] | None = None
) -> TokenEntry:
    return TokenEntry(
        name=name,
        digest=hashlib.sha256(token.encode()).digest(),
        role="operator" if role == "operator" else "viewer",
        rooms=frozenset(rooms) if rooms is not None else None,
    )


TOKENS = (entry(ALICE_OPS, "alice-ops", rooms={"alice", "bob"}), entry(VIEWER, "wall", "viewer"))
TOKEN_POLICY = AccessPolicy(tokens=TOKENS, allowed_origins=frozenset({"https://ops.example.com"}))
OPEN_POLICY = AccessPolicy(allowed_origins=frozenset({"https://ops.example.com"}))
CLOSED_POLICY = AccessPolicy(loopback=False)


def verdict(policy: AccessPolicy, hs: Handshake, **counts: int) -> Admit | Refuse:
    limits = {"connections": 0, "max_connections": 10, "from_address": 0, "max_per_address": 5}
    return admit(policy, hs, **(limits | counts))


# -- tokens and grants -------------------------------------------------------------


def test_hash_token_is_hex_sha256_of_utf8() -> None:
    """The configuration stores hex SHA-256 of the token's UTF-8 bytes."""
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_token("é") == hashlib.sha256("é".encode()).hexdigest()


def test_authenticate_finds_the_matching_entry_only() -> None:
    """A valid token gives its entry's grant; a wrong, empty or oversized one gives None."""
    assert authenticate(ALICE_OPS, TOKENS) == Grant(
        "operator", frozenset({"alice", "bob"}), "alice-ops"
    )
    assert authenticate(VIEWER, TOKENS) == Grant("viewer", None, "wall")
    for bad in ("", "meks_alice-ops-secreT", ALICE_OPS + " ", "x" * 10_000, "\ud800"):
        assert authenticate(bad, TOKENS) is None
    assert authenticate(VIEWER, ()) is None


def test_authenticate_compares_with_every_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured digest is compared with hmac.compare_digest, even after a match."""
    import meksd.core.access as access

    calls: list[bytes] = []
    real = access.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    assert authenticate(ALICE_OPS, TOKENS) is not None
    assert calls == [e.digest for e in TOKENS]


def test_grant_scopes() -> None:
    """Viewers read their rooms; operators also command them; None rooms means all."""
    scoped = Grant("operator", frozenset({"alice"}), "t")
    assert scoped.can_read("alice") and scoped.can_command("alice")
    assert not scoped.can_read("bob") and not scoped.can_command("bob")
    viewer = Grant("viewer", None, "v")
    assert viewer.can_read("anything") and not viewer.can_command("anything")
    assert scoped.visible(["bob", "alice", "carol"]) == ["alice"]
    assert OPEN_GRANT.visible(["b", "a"]) == ["a", "b"]


def test_grant_survives_only_an_unchanged_token() -> None:
    """After a reload a grant stays only if its token is still there, same digest, role and rooms."""
    grant = authenticate(ALICE_OPS, TOKENS)
    assert grant is not None
    same = AccessPolicy(tokens=TOKENS)
    assert grant_survives(grant, TOKEN_POLICY, same)
    fewer = AccessPolicy(tokens=TOKENS[1:])
    assert not grant_survives(grant, TOKEN_POLICY, fewer)
    narrowed = AccessPolicy(tokens=(entry(ALICE_OPS, "alice-ops", rooms={"alice"}), TOKENS[1]))
    assert not grant_survives(grant, TOKEN_POLICY, narrowed)
    rotated = AccessPolicy(tokens=(entry("new-secret", "alice-ops", rooms={"alice", "bob"}),))
    assert not grant_survives(grant, TOKEN_POLICY, rotated)
    assert grant_survives(OPEN_GRANT, OPEN_POLICY, AccessPolicy())
    assert not grant_survives(OPEN_GRANT, OPEN_POLICY, TOKEN_POLICY)


# -- hosts and origins -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    """Loopback means localhost, 127/8 or ::1; every-interface addresses and names are not."""
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        ("https://Ops.Example.com", "https://ops.example.com"),
        ("https://ops.example.com:443", "https://ops.example.com"),
        ("https://ops.example.com/", "https://ops.example.com"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://[::1]:8766", "http://[::1]:8766"),
        ("null", "null"),
        ("https://ops.example.com/path", None),
        ("ftp://x.example", None),
        ("https://user@x.example", None),
        ("https://x.example:99999", None),
        ("ops.example.com", None),
        ("", None),
    ],
)
def test_normalize_origin(origin: str, normalized: str | None) -> None:
    """Origins compare lower-cased without default ports; anything with a path is malformed."""
    assert normalize_origin(origin) == normalized


@PROPERTY
@given(st.text(max_size=60))
def test_normalize_origin_never_raises(text: str) -> None:
    """Any header text gives a normalized origin or None."""
    result = normalize_origin(text)
    assert result is None or result == normalize_origin(result)
    is_loopback_origin(text)


def test_origin_rules_by_mode() -> None:
    """Listed origins pass; loopback pages only in open mode; no Origin (a script) passes the check."""
    for policy in (OPEN_POLICY, TOKEN_POLICY):
        assert policy.origin_allowed("https://ops.example.com")
        assert policy.origin_allowed("HTTPS://OPS.EXAMPLE.COM:443")
        assert not policy.origin_allowed("https://evil.example")
        assert not policy.origin_allowed("null")
        assert policy.origin_allowed(None)
    assert OPEN_POLICY.origin_allowed("http://127.0.0.1:8766")
    assert OPEN_POLICY.origin_allowed("http://localhost:5173")
    assert not TOKEN_POLICY.origin_allowed("http://127.0.0.1:8766")


# -- the handshake verdict -----------------------------------------------------------


def test_open_mode_admits_everyone_as_operator() -> None:
    """No tokens on loopback: every handshake to /ws is an operator of every room."""
    assert verdict(OPEN_POLICY, Handshake("/ws")) == Admit(OPEN_GRANT)
    assert verdict(OPEN_POLICY, Handshake("/ws?token=whatever")) == Admit(OPEN_GRANT)
    assert verdict(OPEN_POLICY, Handshake("/ws", authorization="Basic eA==")) == Admit(OPEN_GRANT)


def test_token_mode_takes_header_or_query_token() -> None:
    """A Bearer header or ?token= authenticates at the handshake; none defers to hello."""
    alice = authenticate(ALICE_OPS, TOKENS)
    assert verdict(TOKEN_POLICY, Handshake("/ws", authorization=f"Bearer {ALICE_OPS}")) == Admit(
        alice
    )
    assert verdict(TOKEN_POLICY, Handshake("/ws", authorization=f"bearer  {ALICE_OPS} ")) == Admit(
        alice
    )
    assert verdict(TOKEN_POLICY, Handshake(f"/ws?a=1&token={ALICE_OPS}")) == Admit(alice)
    assert verdict(TOKEN_POLICY, Handshake("/ws?token=meks%5Fviewer-secret")) == Admit(
        authenticate(VIEWER, TOKENS)
    )
    assert verdict(TOKEN_POLICY, Handshake("/ws")) == Admit(None)
    both = Handshake(f"/ws?token={VIEWER}", authorization=f"Bearer {ALICE_OPS}")
    assert verdict(TOKEN_POLICY, both) == Admit(alice), "the header wins"


@pytest.mark.parametrize(
    ("hs", "status", "reason"),
    [
        (Handshake("/other"), 404, "not_found"),
        (Handshake("/ws/x"), 404, "not_found"),
        (Handshake("/ws?token=nope"), 401, "unauthorized"),
        (Handshake("/ws?token="), 401, "unauthorized"),
        (Handshake("/ws", authorization="Bearer nope"), 401, "unauthorized"),
        (Handshake("/ws", authorization=f"Basic {ALICE_OPS}"), 401, "unauthorized"),
        (Handshake("/ws", authorization="Bearer"), 401, "unauthorized"),
        (
            Handshake(f"/ws?token={ALICE_OPS}", origin="https://evil.example"),
            403,
            "origin_not_allowed",
        ),
    ],
)
def test_token_mode_refusals(hs: Handshake, status: int, reason: str) -> None:
    """Wrong path, bad tokens and foreign origins are refused with a status and a reason."""
    result = verdict(TOKEN_POLICY, hs)
    assert isinstance(result, Refuse)
    assert (result.status, result.reason) == (status, reason)
    assert result.reason in REFUSAL_REASONS
    assert ALICE_OPS not in result.message


def test_capacity_is_checked_before_origin_and_token() -> None:
    """A full server (503) or a greedy address (429) is refused before any token is hashed."""
    hs = Handshake("/ws", origin="https://evil.example", authorization="Bearer nope")
    full = verdict(TOKEN_POLICY, hs, connections=10)
    assert isinstance(full, Refuse) and (full.status, full.reason) == (503, "too_many_connections")
    greedy = verdict(TOKEN_POLICY, hs, from_address=5)
    assert isinstance(greedy, Refuse) and (greedy.status, greedy.reason) == (
        429,
        "too_many_from_address",
    )
    assert verdict(TOKEN_POLICY, Handshake("/ws"), from_address=4) == Admit(None)


def test_closed_mode_refuses_everything() -> None:
    """No tokens on a public listener (after a reload): every handshake is refused."""
    result = verdict(CLOSED_POLICY, Handshake("/ws"))
    assert isinstance(result, Refuse) and result.reason == "no_tokens"


def test_presented_token_header_problems() -> None:
    """An unusable Authorization header is reported, not silently ignored."""
    assert presented_token(Handshake("/ws", authorization="Token abc")) == (
        None,
        "Authorization must be 'Bearer <token>'",
    )
    assert presented_token(Handshake("/ws?x=1")) == (None, None)


@PROPERTY
@given(
    st.text(max_size=40),
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), st.text(max_size=40)),
)
def test_admit_never_raises(target: str, origin: str | None, authorization: str | None) -> None:
    """Any handshake text gives Admit or Refuse; only the configured token authenticates."""
    for policy in (OPEN_POLICY, TOKEN_POLICY, CLOSED_POLICY):
        result = verdict(policy, Handshake(target, origin, authorization))
        assert isinstance(result, Admit | Refuse)
        if isinstance(result, Admit) and policy is TOKEN_POLICY and result.grant is not None:
            assert ALICE_OPS in target + (authorization or "") or VIEWER in target + (
                authorization or ""
            )


def test_access_policy_from_config() -> None:
    """[auth] tables become token entries with binary digests and frozen room sets."""
    auth = AuthConfig(
        tokens=(
            TokenConfig("a", hash_token("s"), "operator", ("r",)),
            TokenConfig("b", hash_token("t")),
        ),
        allowed_origins=("https://x.example",),
    )
    policy = access_policy(auth, listen_host="0.0.0.0")
    assert policy.mode == "token" and not policy.loopback
    assert authenticate("s", policy.tokens) == Grant("operator", frozenset({"r"}), "a")
    assert authenticate("t", policy.tokens) == Grant("viewer", None, "b")
    assert access_policy(AuthConfig(), listen_host="127.0.0.1").mode == "open"
    assert access_policy(AuthConfig(), listen_host="0.0.0.0").mode == "closed"


# -- the message rate gate --------------------------------------------------------------


def test_rate_gate_allows_a_burst_then_the_rate() -> None:
    """burst messages pass at once; then one per 1/rate seconds."""
    limit = RateLimit(rate=10.0, burst=3)
    gate = new_gate(limit, 0.0)
    verdicts = []
    for _ in range(4):
        gate, v = pass_message(gate, limit, 0.0)
        verdicts.append(v)
    assert verdicts == ["ok", "ok", "ok", "limited"]
    gate, v = pass_message(gate, limit, 0.05)
    assert v == "limited"
    gate, v = pass_message(gate, limit, 0.21)
    assert v == "ok"


def test_rate_gate_calls_a_flood_abuse_but_not_a_2x_sender() -> None:
    """Strikes beyond the burst are abuse; a client at twice the rate is limited but never abusive."""
    limit = RateLimit(rate=10.0, burst=5)
    gate = new_gate(limit, 0.0)
    seen = []
    for i in range(200):  # 1000 messages per second
        gate, v = pass_message(gate, limit, i / 1000)
        seen.append(v)
        if v == "abuse":
            break
    assert seen[-1] == "abuse" and len(seen) < 20
    gate = new_gate(limit, 0.0)
    for i in range(2000):  # 20 per second for 100 s
        gate, v = pass_message(gate, limit, i / 20)
        assert v != "abuse"


@PROPERTY
@given(st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=60))
def test_rate_gate_never_passes_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    """Over any schedule, passed messages <= burst + rate * elapsed; time going backwards is harmless."""
    limit = RateLimit(rate=4.0, burst=3)
    gate = new_gate(limit, 100.0)
    now, passed = 100.0, 0
    for gap in gaps:
        now += gap
        gate, v = pass_message(gate, limit, now)
        passed += v == "ok"
        assert 0 <= gate.tokens <= limit.burst
    assert passed <= limit.burst + limit.rate * (now - 100.0) + 1e-9
    gate2, _ = pass_message(gate, limit, now - 50)  # a clock that went back adds nothing
    assert gate2.tokens <= gate.tokens
