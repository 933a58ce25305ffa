"""Battles (PK): status from ``linkMicBattle``, points from ``linkMicArmies``.

Battle points are what the feed's armies messages report; they are not diamonds and
are never derived from gifts. The room keeps one battle, the current or last one.

* ``linkMicBattle`` active for a new ``battleId``: a new active battle, hosts at 0,
  ``started_wall_ms`` from the event. For the current active battle: host names
  and duration are updated, scores kept. For the current battle once ended: ignored
  (a battle does not restart; the message is late).
* ``linkMicBattle`` ended for the current battle: status ended and ``winner`` the
  host with the highest score, ``"draw"`` when the top score is shared. For an
  unknown ``battleId``: an ended battle with those hosts at 0, ``started_wall_ms``
  0 (unknown) and ``winner`` None (unknown), until armies say otherwise.
* ``linkMicArmies`` for the current battle (active or ended): each reported host's
  score and top supporters are replaced (hosts not reported keep theirs, hosts not
  yet known are added); if the battle has ended its ``winner`` is recomputed, since
  final scores may arrive after the end message. For an unknown ``battleId``: a new
  active battle with the reported hosts.
* Supporters per host: deduplicated by user (highest score kept), highest score
  first, ties by user id, at most ``battle_supporters``. Only hosts with at least
  one supporter appear in ``Battle.supporters``, in host order.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from meksd.model.events import Army, BattleArmies, BattleStatus, User
from meksd.model.state import Battle, BattleHost, BattleSupporter

__all__ = ["apply_armies", "apply_battle_status", "winner"]


def apply_battle_status(battle: Battle | None, event: BattleStatus) -> Battle:
    """The room's battle after a ``linkMicBattle`` event."""
    current = battle if battle is not None and battle.battle_id == event.battle_id else None
    if current is None:
        hosts = _merge_hosts((), event.hosts)
        if event.status == "active":
            return Battle(
                battle_id=event.battle_id,
                status="active",
                hosts=hosts,
                started_wall_ms=event.wall_ms,
                duration_s=event.duration_s,
            )
        return Battle(
            battle_id=event.battle_id,
            status="ended",
            hosts=hosts,
            duration_s=event.duration_s,
            winner=None,
        )
    if current.status == "ended" and event.status == "active":
        return current
    hosts = _merge_hosts(current.hosts, event.hosts)
    duration = event.duration_s if event.duration_s is not None else current.duration_s
    if event.status == "active":
        return attrs.evolve(current, hosts=hosts, duration_s=duration)
    return attrs.evolve(
        current, status="ended", hosts=hosts, duration_s=duration, winner=winner(hosts)
    )


def apply_armies(battle: Battle | None, event: BattleArmies, max_supporters: int) -> Battle:
    """The room's battle after a ``linkMicArmies`` event."""
    if battle is None or battle.battle_id != event.battle_id:
        battle = Battle(
            battle_id=event.battle_id,
            status="active",
            hosts=(),
            started_wall_ms=event.wall_ms,
        )
    hosts = list(battle.hosts)
    index = {host.user_id: i for i, host in enumerate(hosts)}
    supporters = dict(battle.supporters)
    for army in event.armies:
        i = index.get(army.host_user_id)
        if i is None:
            index[army.host_user_id] = len(hosts)
            hosts.append(BattleHost(user_id=army.host_user_id, unique_id="", nickname=""))
            i = len(hosts) - 1
        hosts[i] = attrs.evolve(hosts[i], score=army.score)
        supporters[army.host_user_id] = _top_supporters(army, max_supporters)
    new_hosts = tuple(hosts)
    ordered = tuple(
        (host.user_id, supporters[host.user_id])
        for host in new_hosts
        if supporters.get(host.user_id)
    )
    result = attrs.evolve(battle, hosts=new_hosts, supporters=ordered)
    if result.status == "ended":
        result = attrs.evolve(result, winner=winner(new_hosts))
    return result


def winner(hosts: Iterable[BattleHost]) -> str | None:
    """The top-scoring host's user_id, ``"draw"`` if the top is shared, None if no host."""
    best: list[BattleHost] = []
    for host in hosts:
        if not best or host.score > best[0].score:
            best = [host]
        elif host.score == best[0].score:
            best.append(host)
    if not best:
        return None
    if len(best) > 1:
        return "draw"
    return best[0].user_id


def _host(user: User, score: int = 0) -> BattleHost:
    return BattleHost(
        user_id=user.user_id, unique_id=user.unique_id, nickname=user.nickname, score=score
    )


def _merge_hosts(known: tuple[BattleHost, ...], users: tuple[User, ...]) -> tuple[BattleHost, ...]:
    """Hosts as ``users`` lists them (names updated, scores kept), then any others known."""
    if not users:
        return known
    by_id = {host.user_id: host for host in known}
    merged: list[BattleHost] = []
    listed: set[str] = set()
    for user in users:
        if user.user_id in listed:
            continue
        old = by_id.get(user.user_id)
        if old is None:
            merged.append(_host(user))
        else:
            merged.append(
                BattleHost(
                    user_id=old.user_id,
                    unique_id=user.unique_id or old.unique_id,
                    nickname=user.nickname or old.nickname,
                    score=old.score,
                )
            )
        listed.add(user.user_id)
    merged.extend(host for host in known if host.user_id not in listed)
    return tuple(merged)


def _top_supporters(army: Army, limit: int) -> tuple[BattleSupporter, ...]:
    if limit <= 0:
        return ()
    best: dict[str, BattleSupporter] = {}
    for supporter in army.supporters:
        user = supporter.user
        old = best.get(user.user_id)
        if old is None or supporter.score > old.score:
            best[user.user_id] = BattleSupporter(
                user_id=user.user_id,
                unique_id=user.unique_id,
                nickname=user.nickname,
                score=supporter.score,
            )
    ranked = sorted(best.values(), key=lambda s: (-s.score, s.user_id))
    return tuple(ranked[:limit])
