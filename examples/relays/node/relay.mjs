// Forward one TikTok LIVE room to meksd: tiktok-live-connector in, WebSocket out.
//
//   node relay.mjs <tiktok-username> [port]        (default port 9001)
//
// meksd connects to ws://127.0.0.1:<port>/feed (a `websocket` source). Every
// connection first gets the last REPLAY envelopes, then each new one as it arrives:
// after a reconnect or a failover meksd misses nothing, and its msgId memory drops
// what it already had. See README.md.

import { WebSocketServer } from 'ws';
import { TikTokLiveConnection } from 'tiktok-live-connector';
import { FORWARDED, toEnvelope } from './map.mjs';

const [uniqueId, port = '9001'] = process.argv.slice(2);
if (!uniqueId) {
  console.error('usage: node relay.mjs <tiktok-username> [port]');
  process.exit(64);
}

const HISTORY = 500; // envelopes kept for replay
const REPLAY = 50; // sent first to each new meksd connection
const MAX_BUFFERED = 4 * 1024 * 1024; // a meksd that stops reading is dropped (it reconnects)
const history = [];

const server = new WebSocketServer({ host: '127.0.0.1', port: Number(port), path: '/feed' });
server.on('connection', (ws) => {
  for (const text of history.slice(-REPLAY)) ws.send(text);
});
console.error(`relay for @${uniqueId}: meksd connects to ws://127.0.0.1:${port}/feed`);

function publish(envelope) {
  const text = JSON.stringify(envelope);
  history.push(text);
  if (history.length > HISTORY) history.shift();
  for (const ws of server.clients) {
    if (ws.readyState !== ws.OPEN) continue;
    if (ws.bufferedAmount > MAX_BUFFERED) ws.terminate();
    else ws.send(text);
  }
}

const connection = new TikTokLiveConnection(uniqueId, { processInitialData: true });
for (const name of FORWARDED) {
  connection.on(name, (data) => {
    const envelope = toEnvelope(name, data);
    if (envelope) publish(envelope);
  });
}

let retry = 5;
async function connect() {
  try {
    const state = await connection.connect();
    console.error(`connected to room ${state.roomId}`);
    retry = 5;
  } catch (err) {
    console.error(`cannot connect (${err?.message ?? err}); retrying in ${retry}s`);
    setTimeout(connect, retry * 1000);
    retry = Math.min(retry * 2, 300); // offline streamer: back off to 5 minutes
  }
}
connection.on('disconnected', () => setTimeout(connect, retry * 1000));
connect();
