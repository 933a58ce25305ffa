// meksd dashboard page: the reference client of protocol v1 (docs/protocol.md).
//
// Messages update an in-memory model at once; the DOM is updated at most once per
// animation frame, only for the parts that changed (a burst of hundreds of deltas
// per second costs one render per frame). Untrusted text (nicknames, comments) is
// only ever set with textContent.
"use strict";

(() => {
  const TOP_N = 20; // leaderboard rows shown
  const GIFT_FEED = 40; // gift items shown
  const CHAT_SHOWN = 60; // latest chat messages rendered
  const REPLIES_SHOWN = 10; // latest operator replies rendered
  const BACKOFF_MIN_MS = 250;
  const BACKOFF_MAX_MS = 10000;
  const LAGGED_SHOW_MS = 2500;
  const COMMAND_GIVE_UP_MS = 30000;
  const BIG_GIFT = 1000; // diamonds: highlighted in the feed

  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat();

  // --- model ----------------------------------------------------------------------
  const m = {
    config: null,
    ws: null,
    open: false,
    attempts: 0,
    reconnects: 0,
    role: "operator", // open (loopback) servers make everyone operator
    rooms: [],
    room: null,
    epoch: null,
    seq: -1,
    synced: false, // a snapshot of the current room has arrived
    laggedUntil: 0,
    view: null, // {leaderboard: Map, totals, viewers, battle, chat: [], chat_limit, live}
    gifts: [], // newest first: {key, item, count, counted}
    streaks: new Map(), // user_id:gift_id -> feed entry in progress
    pending: new Map(), // command id -> {msg, sentAt, label}
    ranks: new Map(), // user_id -> rank at the last render (for rank-change marks)
    dirty: new Set(),
  };
  window.meks = m; // for debugging and tests: read-only by convention

  // --- rendering, batched per frame ---------------------------------------------------
  let frame = 0;
  function mark(...parts) {
    for (const p of parts) m.dirty.add(p);
    if (!frame) frame = requestAnimationFrame(render);
  }

  function render() {
    frame = 0;
    const dirty = m.dirty;
    m.dirty = new Set();
    if (dirty.has("badge")) renderBadge();
    if (dirty.has("role")) renderRole();
    if (!m.view) return;
    if (dirty.has("counters")) renderCounters();
    if (dirty.has("leaderboard")) renderLeaderboard();
    if (dirty.has("battle")) renderBattle();
    if (dirty.has("gifts")) renderGifts();
    if (dirty.has("chat")) renderChat();
    if (dirty.has("replies")) renderReplies();
  }

  function setStatus() {
    mark("badge");
  }

  function status() {
    if (!m.open) return "reconnecting";
    if (!m.synced) return "resyncing";
    if (Date.now() < m.laggedUntil) return "lagged";
    return "live";
  }

  function renderBadge() {
    const s = status();
    const badge = $("badge");
    badge.dataset.state = s;
    badge.dataset.epoch = m.epoch || "";
    badge.dataset.seq = String(m.seq);
    badge.dataset.reconnects = String(m.reconnects);
    $("badge-text").textContent =
      s === "reconnecting" && m.attempts > 1 ? `reconnecting (${m.attempts})` : s;
    $("badge-pos").textContent = m.epoch ? `${m.epoch.slice(0, 17)} · #${m.seq}` : "";
    badge.title = m.epoch ? `epoch ${m.epoch}, seq ${m.seq}` : "not subscribed";
  }

  function renderCounters() {
    const v = m.view;
    const t = v.totals;
    $("c-viewers").textContent = fmt.format(v.viewers);
    for (const k of ["likes", "diamonds", "gifts", "comments", "joins", "follows", "shares"]) {
      $(`c-${k}`).textContent = fmt.format(t[k]);
    }
    const live = $("live");
    live.dataset.live = v.live;
    live.textContent = { live: "LIVE", paused: "PAUSED", ended: "ENDED" }[v.live] || String(v.live).toUpperCase();
  }

  function ranked() {
    const rows = Array.from(m.view.leaderboard.values());
    rows.sort((a, b) => b.diamonds - a.diamonds || a.since - b.since || cmp(a.user_id, b.user_id));
    return rows;
  }
  const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

  const rowEls = new Map(); // user_id -> <li>
  function renderLeaderboard() {
    const list = $("leaderboard");
    const rows = ranked();
    $("lb-count").textContent = rows.length ? `(${fmt.format(rows.length)} gifters)` : "";
    const top = rows.slice(0, TOP_N);
    // FLIP: remember where rows were, move them, animate from there.
    const before = new Map();
    for (const [uid, el] of rowEls) before.set(uid, el.getBoundingClientRect().top);
    const keep = new Set(top.map((r) => r.user_id));
    for (const [uid, el] of rowEls) {
      if (!keep.has(uid)) {
        el.remove();
        rowEls.delete(uid);
      }
    }
    const ranks = new Map();
    top.forEach((row, i) => {
      let el = rowEls.get(row.user_id);
      const isNew = !el;
      if (isNew) {
        el = document.createElement("li");
        el.dataset.userId = row.user_id;
        el.append(span("rank"), span("who"), span("dia"), span("move"));
        rowEls.set(row.user_id, el);
      }
      const rank = i + 1;
      ranks.set(row.user_id, rank);
      const prev = m.ranks.get(row.user_id);
      el.dataset.rank = String(rank);
      el.dataset.diamonds = String(row.diamonds);
      el.children[0].textContent = String(rank);
      const who = el.children[1];
      who.textContent = row.nickname || row.unique_id || row.user_id;
      if (row.unique_id && row.nickname && row.unique_id !== row.nickname) {
        const small = document.createElement("small");
        small.textContent = "@" + row.unique_id;
        who.append(small);
      }
      el.children[2].textContent = fmt.format(row.diamonds);
      if (prev !== undefined && prev !== rank) flash(el, prev > rank ? "up" : "down");
      else if (prev === undefined && m.ranks.size) flash(el, "new");
      if (list.children[i] !== el) list.insertBefore(el, list.children[i] || null);
    });
    m.ranks = ranks;
    for (const [uid, el] of rowEls) {
      const was = before.get(uid);
      if (was === undefined) continue;
      const dy = was - el.getBoundingClientRect().top;
      if (Math.abs(dy) > 1 && el.animate) {
        el.animate([{ transform: `translateY(${dy}px)` }, { transform: "none" }], {
          duration: 350,
          easing: "cubic-bezier(.2,.8,.2,1)",
        });
      }
    }
  }

  function flash(el, cls) {
    el.classList.remove("up", "down", "new");
    el.classList.add(cls);
    clearTimeout(el._flash);
    el._flash = setTimeout(() => el.classList.remove(cls), 1200);
  }

  function span(cls, text) {
    const s = document.createElement("span");
    s.className = cls;
    if (text !== undefined) s.textContent = text;
    return s;
  }

  function renderBattle() {
    const b = m.view.battle;
    const box = $("battle");
    if (!b) {
      box.dataset.status = "none";
      return;
    }
    box.dataset.status = b.status;
    box.dataset.battleId = b.battle_id;
    const hosts = $("battle-hosts");
    const bar = $("battle-bar");
    const sups = $("battle-supporters");
    hosts.replaceChildren();
    bar.replaceChildren();
    sups.replaceChildren();
    const total = b.hosts.reduce((s, h) => s + Math.max(0, h.score), 0);
    for (const h of b.hosts) {
      const el = document.createElement("div");
      el.className = "host" + (b.winner === h.user_id ? " winner" : "");
      el.dataset.userId = h.user_id;
      el.append(span("name", h.nickname || h.unique_id || h.user_id), span("score", fmt.format(h.score)));
      hosts.append(el);
      const seg = document.createElement("span");
      seg.style.width = `${total ? (100 * Math.max(0, h.score)) / total : 100 / b.hosts.length}%`;
      bar.append(seg);
      const ol = document.createElement("ol");
      for (const s of (b.supporters && b.supporters[h.user_id]) || []) {
        const li = document.createElement("li");
        li.textContent = `${s.nickname || s.unique_id || s.user_id} · ${fmt.format(s.score)}`;
        ol.append(li);
        if (ol.children.length >= 3) break;
      }
      sups.append(ol);
    }
    renderClock();
  }

  function renderClock() {
    const b = m.view && m.view.battle;
    const clock = $("battle-clock");
    if (!b) return;
    if (b.status === "ended") {
      const w = b.hosts.find((h) => h.user_id === b.winner);
      clock.textContent = b.winner === "draw" ? "Draw" : w ? `Winner: ${w.nickname || w.unique_id}` : "Ended";
      return;
    }
    if (!b.duration_s || !b.started_wall_ms) {
      clock.textContent = "";
      return;
    }
    const left = Math.max(0, b.started_wall_ms + b.duration_s * 1000 - Date.now());
    const s = Math.ceil(left / 1000);
    clock.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function renderGifts() {
    const list = $("gifts");
    const frag = document.createDocumentFragment();
    for (const entry of m.gifts) {
      const g = entry.item;
      const li = document.createElement("li");
      li.dataset.streak = g.streak;
      li.dataset.msgId = g.msg_id;
      li.dataset.key = entry.key;
      if (entry.counted >= BIG_GIFT) li.className = "big";
      const dia =
        g.streak === "progress" ? `${fmt.format(g.diamond_count * g.repeat_count)}` : `+${fmt.format(entry.counted)}`;
      li.append(
        span("who", g.nickname || g.unique_id || g.user_id),
        span("what", g.gift_name || `gift ${g.gift_id}`),
        span("count", `×${g.repeat_count}`),
        span("dia", dia + " 💎"),
      );
      frag.append(li);
    }
    list.replaceChildren(frag);
  }

  // Operator replies: pending, then sent or failed (with the reason). Text only.
  function renderReplies() {
    const items = m.view.replies.slice(-REPLIES_SHOWN);
    const list = $("replies");
    list.replaceChildren(
      ...items.map((r) => {
        const li = document.createElement("li");
        li.dataset.status = r.status;
        const label = r.status === "failed" ? `failed: ${r.error || "?"}` : r.status;
        li.append(span("who", "you"), span("text", r.text), span("status", label));
        return li;
      }),
    );
    list.scrollTop = list.scrollHeight;
  }

  function renderRole() {
    document.body.dataset.role = m.role;
    $("role").textContent = m.role;
  }

  // Chat lines are keyed by msg_id and updated in place: during a burst the list
  // changes every frame, and a button re-created under the pointer would lose the
  // operator's click. While the pointer is over the list it does not auto-scroll.
  const chatEls = { chat: new Map(), pinned: new Map() };
  let chatHover = false;
  let chatResume = false;
  function renderChat() {
    const items = m.view.chat;
    keyed($("pinned"), chatEls.pinned, items.filter((c) => c.pinned));
    const list = $("chat");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const follow = !chatHover && (chatResume || atBottom);
    chatResume = false;
    keyed(list, chatEls.chat, items.slice(-CHAT_SHOWN));
    if (follow) list.scrollTop = list.scrollHeight;
  }

  function keyed(list, els, items) {
    const want = new Map(items.map((c) => [c.msg_id, c]));
    for (const [id, el] of els) {
      if (!want.has(id)) {
        el.remove();
        els.delete(id);
      }
    }
    let i = 0;
    for (const c of want.values()) {
      let el = els.get(c.msg_id);
      if (!el) {
        el = chatLine(c);
        els.set(c.msg_id, el);
      }
      updateLine(el, c);
      if (list.children[i] !== el) list.insertBefore(el, list.children[i] || null);
      i += 1;
    }
  }

  function chatLine(c) {
    const li = document.createElement("li");
    li.dataset.msgId = c.msg_id;
    li.append(span("who", c.nickname || c.unique_id || c.user_id), span("text", c.comment));
    const actions = span("actions operator-only");
    actions.append(actionButton(c.msg_id), actionButton(c.msg_id));
    li.append(actions);
    return li;
  }

  function actionButton(msgId) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.msgId = msgId;
    return b;
  }

  function updateLine(li, c) {
    const pinned = String(!!c.pinned);
    const hidden = String(!!c.hidden);
    if (li.dataset.pinned !== pinned) li.dataset.pinned = pinned;
    if (li.dataset.hidden !== hidden) li.dataset.hidden = hidden;
    const [pin, hide] = li.lastChild.children;
    setButton(pin, c.msg_id, c.pinned ? "chat.unpin" : "chat.pin", c.pinned ? "Unpin" : "Pin");
    setButton(hide, c.msg_id, c.hidden ? "chat.unhide" : "chat.hide", c.hidden ? "Unhide" : "Hide");
  }

  function setButton(b, msgId, action, label) {
    if (b.dataset.action !== action) {
      b.dataset.action = action;
      b.textContent = label;
    }
    const kind = action.replace(".un", "."); // pin and unpin, hide and unhide
    let busy = false;
    for (const p of m.pending.values()) {
      if (p.msg.args.msg_id === msgId && p.msg.action.replace(".un", ".") === kind) busy = true;
    }
    if (b.disabled !== busy) b.disabled = busy;
  }

  // --- applying messages ---------------------------------------------------------------
  function takeSnapshot(msg) {
    const s = msg.state;
    const newEpoch = msg.epoch !== m.epoch;
    m.view = {
      leaderboard: new Map(s.leaderboard.map((r) => [r.user_id, r])),
      totals: s.totals,
      viewers: s.viewers,
      battle: s.battle,
      chat: s.chat,
      chat_limit: s.chat_limit,
      live: s.live,
      replies: s.replies || [],
    };
    if (newEpoch) {
      m.gifts = [];
      m.streaks.clear();
      m.ranks = new Map();
    }
    m.epoch = msg.epoch;
    m.seq = msg.seq;
    m.synced = true;
    mark("badge", "counters", "leaderboard", "battle", "gifts", "chat", "replies");
  }

  function takeDelta(d) {
    if (!m.synced) return; // a snapshot is on its way; it includes this
    if (d.epoch !== m.epoch || d.seq !== m.seq + 1) {
      // The server never does this; if it happens, start over from a snapshot.
      resubscribe(false);
      return;
    }
    const v = m.view;
    if (d.leaderboard) {
      for (const r of d.leaderboard) v.leaderboard.set(r.user_id, r);
      mark("leaderboard");
    }
    if (d.chat || d.chat_updates) {
      let items = v.chat;
      if (d.chat_updates) {
        const flags = new Map(d.chat_updates.map((u) => [u.msg_id, u]));
        items = items.map((c) => {
          const u = flags.get(c.msg_id);
          return u ? { ...c, pinned: u.pinned, hidden: u.hidden } : c;
        });
      }
      if (d.chat) items = items.concat(d.chat);
      const start = items.length - v.chat_limit;
      v.chat = v.chat_limit > 0 ? items.filter((c, i) => i >= start || c.pinned) : [];
      mark("chat");
    }
    if (d.replies) {
      // Upsert by reply_id (a settled reply keeps its place); keep the pending ones
      // and the last chat_limit (protocol: delta).
      const byId = new Map(v.replies.map((r) => [r.reply_id, r]));
      for (const r of d.replies) byId.set(r.reply_id, r);
      const all = Array.from(byId.values());
      const start = all.length - v.chat_limit;
      v.replies = all.filter((r, i) => i >= start || r.status === "pending");
      mark("replies");
    }
    if (d.gifts) {
      for (const g of d.gifts) takeGift(g);
      mark("gifts");
    }
    if (d.totals) v.totals = d.totals;
    if ("viewers" in d) v.viewers = d.viewers;
    if ("live" in d) v.live = d.live;
    if (d.totals || "viewers" in d || "live" in d) mark("counters");
    if ("battle" in d) {
      v.battle = d.battle;
      mark("battle");
    }
    m.seq = d.seq;
    mark("badge");
  }

  function takeGift(g) {
    // A streak shows live, in one feed entry per (gifter, gift), and is counted once:
    // progress items carry no diamonds; the end (or timeout) item carries them all.
    const key = `${g.user_id}:${g.gift_id}`;
    let entry = g.streak === "single" ? null : m.streaks.get(key);
    if (entry) {
      entry.item = g;
      entry.counted = g.counted_diamonds;
      const i = m.gifts.indexOf(entry);
      if (i > 0) {
        m.gifts.splice(i, 1);
        m.gifts.unshift(entry);
      }
    } else {
      entry = { key, item: g, counted: g.counted_diamonds };
      m.gifts.unshift(entry);
      if (m.gifts.length > GIFT_FEED) {
        for (const old of m.gifts.splice(GIFT_FEED)) {
          if (m.streaks.get(old.key) === old) m.streaks.delete(old.key);
        }
      }
    }
    if (g.streak === "progress") m.streaks.set(key, entry);
    else m.streaks.delete(key);
  }

  function handle(msg) {
    switch (msg.type) {
      case "welcome":
        if ("role" in msg) {
          m.role = msg.role || "viewer"; // null: not authenticated (yet)
          mark("role");
        }
        if (msg.rooms) setRooms(msg.rooms);
        break;
      case "snapshot":
        if (msg.room === m.room) takeSnapshot(msg);
        break;
      case "delta":
        if (msg.room === m.room) takeDelta(msg);
        break;
      case "lagged":
        if (msg.room === m.room) {
          m.laggedUntil = Date.now() + LAGGED_SHOW_MS;
          m.synced = false; // the snapshot follows
          setStatus();
          setTimeout(setStatus, LAGGED_SHOW_MS + 50);
        }
        break;
      case "ack":
        takeAck(msg);
        break;
      case "reply_result":
        if (!msg.ok) toast(`reply ${msg.reply_id} failed: ${msg.error}`);
        break;
      case "error":
        if (msg.code === "room_closed" || msg.code === "unknown_room") {
          toast(`room ${msg.room || m.room}: ${msg.message}`);
        } else if (msg.code === "unauthorized") {
          toast(`${msg.message}: open this page with ?token=YOUR_TOKEN`);
        } else {
          toast(`${msg.code}: ${msg.message}`);
        }
        break;
      default:
        break; // pong, and message types of later versions
    }
  }

  // --- connection ------------------------------------------------------------------------
  function wsUrl() {
    const override = params.get("ws");
    if (override) return override;
    const c = m.config || {};
    if (c.ws_url) return c.ws_url;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.hostname}:${c.ws_port || 8765}${c.ws_path || "/ws"}`;
  }

  function connect() {
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      toast(`cannot open ${wsUrl()}: ${e.message}`);
      retry();
      return;
    }
    m.ws = ws;
    ws.onopen = () => {
      if (m.ws !== ws) return;
      m.open = true;
      if (m.attempts > 0 || m.reconnects > 0) m.reconnects += 1;
      m.attempts = 0;
      // A stored token only goes to the server the page names itself: a link with
      // ?ws= pointing elsewhere must not collect it.
      const token = params.get("token") || (params.get("ws") ? null : localStorage.getItem("meksd.token"));
      if (token) send({ type: "hello", token });
      if (m.room) resubscribe(true);
      for (const p of m.pending.values()) send(p.msg); // same ids: retries are idempotent
      setStatus();
    };
    ws.onmessage = (ev) => {
      if (m.ws !== ws) return;
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;
      }
      for (const msg of Array.isArray(data) ? data : [data]) handle(msg);
    };
    ws.onclose = () => {
      if (m.ws !== ws) return;
      m.ws = null;
      m.open = false;
      m.synced = false;
      setStatus();
      retry();
    };
  }

  function retry() {
    m.attempts += 1;
    // Exponential backoff with jitter: many dashboards must not reconnect in step.
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(m.attempts - 1, 10));
    const delay = cap / 2 + (Math.random() * cap) / 2;
    setStatus();
    setTimeout(connect, delay);
  }

  function send(msg) {
    if (m.ws && m.open) m.ws.send(JSON.stringify(msg));
  }

  function resubscribe(resume) {
    const msg = { type: "subscribe", room: m.room };
    if (resume && m.view && m.epoch && m.seq >= 0) {
      // The server answers with the missed deltas (maybe none: the view is current)
      // or, if it cannot, with a snapshot: either way the view stays valid.
      msg.since = { epoch: m.epoch, seq: m.seq };
      m.synced = true;
    } else {
      m.synced = false;
    }
    send(msg);
    setStatus();
  }

  function setRooms(rooms) {
    m.rooms = rooms;
    const sel = $("room");
    const current = Array.from(sel.options).map((o) => o.value);
    if (current.join("\n") !== rooms.join("\n")) {
      sel.replaceChildren(...rooms.map((r) => new Option(r, r)));
    }
    const wanted = m.room || new URLSearchParams(location.hash.slice(1)).get("room") || params.get("room");
    const room = rooms.includes(wanted) ? wanted : rooms[0];
    if (room && room !== m.room) switchRoom(room);
    sel.value = m.room || "";
  }

  function switchRoom(room) {
    if (m.room && m.room !== room) send({ type: "unsubscribe", room: m.room });
    m.room = room;
    m.epoch = null;
    m.seq = -1;
    m.view = null;
    m.gifts = [];
    m.streaks.clear();
    m.ranks = new Map();
    for (const el of rowEls.values()) el.remove();
    rowEls.clear();
    history.replaceState(null, "", `#room=${encodeURIComponent(room)}`);
    $("room").value = room;
    resubscribe(false);
  }

  // --- operator commands -----------------------------------------------------------------
  let counter = 0;
  function commandId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    counter += 1;
    return `${Date.now().toString(36)}-${counter}-${Math.random().toString(36).slice(2, 10)}`;
  }

  function command(action, args, label) {
    const msg = { type: "command", id: commandId(), room: m.room, action, args };
    m.pending.set(msg.id, { msg, sentAt: Date.now(), label });
    send(msg); // if the connection is down, it goes out on reconnect
    mark("chat");
    setTimeout(() => {
      if (m.pending.delete(msg.id)) {
        toast(`${label}: no answer from the server; it may not have been applied`);
        mark("chat");
      }
    }, COMMAND_GIVE_UP_MS);
  }

  function takeAck(ack) {
    const p = m.pending.get(ack.id);
    if (!p) return;
    m.pending.delete(ack.id);
    mark("chat");
    if (ack.ok) {
      if (p.msg.action === "session.reset") toast(`new session started (epoch ${ack.epoch})`, "info");
      return;
    }
    if (ack.error === "forbidden") {
      m.role = "viewer";
      mark("role");
    }
    toast(`${p.label}: ${ack.error}${ack.message ? ` (${ack.message})` : ""}`);
  }

  function toast(text, kind) {
    const el = document.createElement("div");
    el.className = `toast ${kind || ""}`;
    el.textContent = text;
    $("toasts").append(el);
    setTimeout(() => el.remove(), 6000);
  }

  // --- start ---------------------------------------------------------------------------------
  function start() {
    $("room").addEventListener("change", (e) => switchRoom(e.target.value));
    for (const id of ["chat", "pinned"]) {
      $(id).addEventListener("click", (e) => {
        const b = e.target.closest("button[data-action]");
        if (!b || b.disabled) return;
        b.disabled = true;
        command(b.dataset.action, { msg_id: b.dataset.msgId }, `${b.textContent} message`);
      });
    }
    $("chat").addEventListener("pointerenter", () => (chatHover = true));
    $("chat").addEventListener("pointerleave", () => {
      chatHover = false;
      chatResume = true; // hovering paused the chat; leaving resumes it
      mark("chat");
    });
    $("reply-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("reply-text");
      const text = input.value.trim();
      if (!m.room || !text) return;
      command("chat.reply", { text }, "Reply");
      input.value = "";
    });
    $("reset").addEventListener("click", () => {
      if (!m.room) return;
      if (!confirm(`End the session of room ${m.room} and start a new one?`)) return;
      command("session.reset", {}, "Reset session");
    });
    setInterval(() => {
      if (m.view && m.view.battle && m.view.battle.status === "active") renderClock();
    }, 250);
    fetch("config.json", { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : {}))
      .catch(() => ({}))
      .then((cfg) => {
        m.config = cfg;
        connect();
      });
    mark("badge", "role");
  }

  start();
})();
