// A minimal `ws` broadcaster, what a user would write instead of meksd: read each
// room's feed, send every event to every dashboard connected to that room.
//
//   node broadcast.js <port> <feed-url>[,<feed-url>...] event|batched [tick-ms]
//
// Room i reads the i-th feed; a dashboard picks its room by path: "/<i>" ("/" is room 0).
// event:   each feed message is sent to the room's clients as it arrives (one frame each).
// batched: a room's feed messages are collected and sent every tick as one JSON array.
// Prints "LISTENING <port>" once the server is up and "FEED" once every feed is open.
"use strict";
const WebSocket = require("ws");

const [port, feedArg, mode, tickArg] = process.argv.slice(2);
const feedUrls = feedArg.split(",");
const tickMs = Number(tickArg || 16);
const rooms = feedUrls.map(() => ({ clients: new Set(), pending: [] }));
const wss = new WebSocket.Server({ host: "127.0.0.1", port: Number(port) });

wss.on("connection", (client, request) => {
  const index = Number(request.url.slice(1) || "0");
  const room = rooms[index];
  if (room === undefined) { client.close(1008, "no such room"); return; }
  room.clients.add(client);
  client.on("close", () => room.clients.delete(client));
});

function broadcast(room, data) {
  for (const client of room.clients) {
    if (client.readyState === WebSocket.OPEN) client.send(data);
  }
}

if (mode === "batched") {
  setInterval(() => {
    for (const room of rooms) {
      if (room.pending.length === 0) continue;
      const body = "[" + room.pending.join(",") + "]";
      room.pending = [];
      broadcast(room, body);
    }
  }, tickMs);
}

wss.on("listening", () => {
  console.log(`LISTENING ${wss.address().port}`);
  let open = 0;
  rooms.forEach((room, index) => {
    const feed = new WebSocket(feedUrls[index]);
    feed.on("open", () => { if (++open === rooms.length) console.log("FEED"); });
    feed.on("message", (data) => {
      const text = data.toString();
      if (mode === "batched") room.pending.push(text);
      else broadcast(room, text);
    });
    feed.on("close", () => process.exit(0));
    feed.on("error", (err) => { console.error(String(err)); process.exit(1); });
  });
});
