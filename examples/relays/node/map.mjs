// Connector events -> meksd envelopes ({"event": ..., "data": {...}}; docs/feed-format.md).
//
// Pure functions, no dependencies: the relay imports them, and meksd's test suite runs
// them under plain `node` against recorded connector shapes. They accept both shapes
// tiktok-live-connector has emitted: v2's decoded protobuf messages (nested `user`,
// `common.msgId`, `giftDetails`) and v1's flattened objects (`userId`, `msgId`,
// `diamondCount` at the top). What meksd does not use is left out.

/** The connector events the relay forwards (WebcastEvent values). */
export const FORWARDED = [
  'gift', 'chat', 'like', 'member', 'follow', 'share', 'roomUser',
  'linkMicBattle', 'linkMicArmies', 'streamEnd', 'controlMessage',
];

// 64-bit numbers arrive as strings (or Long-like objects); counts must be JSON integers.
function count(value) {
  if (typeof value === 'string' && /^\d+$/.test(value)) return Number(value);
  if (value && typeof value === 'object' && 'low' in value) return Number(value.toString());
  return value;
}

// IDs may stay strings (meksd takes strings or integers, always as strings).
function id(value) {
  if (value === undefined || value === null || value === '' || value === '0') return undefined;
  return typeof value === 'object' ? String(value) : value;
}

function user(data) {
  const u = data?.user ?? data ?? {};
  return {
    userId: id(u.userId ?? u.id),
    uniqueId: u.uniqueId ?? u.displayId ?? '',
    nickname: u.nickname ?? '',
  };
}

function msgId(data) {
  return id(data?.common?.msgId ?? data?.msgId);
}

function clean(object) {
  for (const key of Object.keys(object)) if (object[key] === undefined) delete object[key];
  return object;
}

function armies(data) {
  if (Array.isArray(data.battleArmies)) {
    return data.battleArmies.map((army) => ({
      hostUserId: id(army.hostUserId),
      points: count(army.points ?? army.hostScore ?? 0),
      participants: (army.participants ?? []).map((p) => clean({ ...user(p), points: count(p.points ?? p.score) })),
    }));
  }
  // v2: battleItems keyed by host id, each with the host's score and top supporters.
  return Object.entries(data.battleItems ?? {}).map(([host, item]) => ({
    hostUserId: id(host),
    points: count(item?.hostScore ?? item?.points ?? 0),
    participants: (item?.userArmies ?? item?.participants ?? []).map((p) =>
      clean({ ...user(p), points: count(p.score ?? p.points) })),
  }));
}

function hosts(data) {
  if (Array.isArray(data.battleUsers)) return data.battleUsers.map(user);
  return Object.values(data.anchorInfo ?? data.anchorsInfo ?? {}).map((a) => user(a?.user ?? a));
}

/** The meksd envelope for connector event `name` carrying `data`, or null to skip it. */
export function toEnvelope(name, data) {
  const common = { msgId: msgId(data) };
  switch (name) {
    case 'gift': {
      const details = data.giftDetails ?? {};
      return {
        event: 'gift',
        data: clean({
          ...common,
          ...user(data),
          giftId: id(data.giftId ?? details.id),
          giftName: details.giftName ?? data.giftName ?? '',
          giftType: count(details.giftType ?? data.giftType ?? 0),
          repeatCount: count(data.repeatCount ?? 1),
          repeatEnd: Boolean(data.repeatEnd),
          groupId: id(data.groupId),
          diamondCount: count(details.diamondCount ?? data.diamondCount ?? 0),
        }),
      };
    }
    case 'chat':
      return { event: 'chat', data: clean({ ...common, ...user(data), comment: data.comment ?? data.content ?? '' }) };
    case 'like':
      return {
        event: 'like',
        data: clean({
          ...common,
          ...user(data),
          likeCount: count(data.likeCount ?? data.count ?? 1),
          totalLikeCount: count(data.totalLikeCount ?? data.total),
        }),
      };
    case 'member':
    case 'follow':
    case 'share':
      return { event: name, data: clean({ ...common, ...user(data) }) };
    case 'roomUser':
      return { event: 'roomUser', data: clean({ ...common, viewerCount: count(data.viewerCount ?? data.total ?? 0) }) };
    case 'linkMicBattle':
      return {
        event: 'linkMicBattle',
        data: clean({
          ...common,
          battleId: id(data.battleId),
          battleStatus: count(data.battleStatus ?? data.action),
          battleDuration: count(data.battleDuration ?? data.battleSetting?.duration),
          battleUsers: hosts(data),
        }),
      };
    case 'linkMicArmies':
      return { event: 'linkMicArmies', data: clean({ ...common, battleId: id(data.battleId), battleArmies: armies(data) }) };
    case 'streamEnd':
      return { event: 'streamEnd', data: clean({ ...common }) };
    case 'controlMessage':
      // action 1 paused, 2 unpaused, 3 ended, 4 suspended; streamEnd also fires for 3 and 4.
      if (count(data.action) !== 1 && count(data.action) !== 2) return null;
      return { event: 'controlMessage', data: clean({ ...common, action: count(data.action) }) };
    default:
      return null;
  }
}
