// A minimal `ws` broadcaster, what a user would write instead of meksd: read one
// feed, send every event to every connected dashboard.
//
//   node broadcast.js <port> <feed-url> event|batched [tick-ms]
//
// event:   each feed message is sent to every client as it arrives (one frame each).
// batched: feed messages are collected and sent every tick as one JSON array.
// Prints "LISTENING <port>" once the server is up and "FEED" once the feed is open.
"use strict";
const WebSocket = require("ws");

const [port, feedUrl, mode, tickArg] = process.argv.slice(2);
const tickMs = Number(tickArg || 16);
const wss = new WebSocket.Server({ host: "127.0.0.1", port: Number(port) });

function broadcast(data) {
  for (const client of wss.clients) {
    if (client.readyState === WebSocket.OPEN) client.send(data);
  }
}

let pending = [];
if (mode === "batched") {
  setInterval(() => {
    if (pending.length === 0) return;
    const body = "[" + pending.join(",") + "]";
    pending = [];
    broadcast(body);
  }, tickMs);
}

wss.on("listening", () => {
  console.log(`LISTENING ${wss.address().port}`);
  const feed = new WebSocket(feedUrl);
  feed.on("open", () => console.log("FEED"));
  feed.on("message", (data) => {
    const text = data.toString();
    if (mode === "batched") pending.push(text);
    else broadcast(text);
  });
  feed.on("close", () => process.exit(0));
  feed.on("error", (err) => { console.error(String(err)); process.exit(1); });
});
