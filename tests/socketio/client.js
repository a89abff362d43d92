// N socket.io-client 4 clients for tests/socketio.rs, all through one gateway URL.
//
//   node client.js URL N_WEBSOCKET N_UPGRADE
//
// Clients 0..N_WEBSOCKET use `transports: ["websocket"]`; the next N_UPGRADE use the default
// (HTTP long-polling, then the upgrade to WebSocket), which only works when every request of a
// session reaches the same backend (the gateway's route cookie: `withCredentials: true` gives
// the Node client a cookie jar). Reconnection is socket.io's own; nothing here reconnects.
//
// Each client sends `echo` {seq, text} every INTERVAL_MS while connected and waits for the ack
// ({backend, msg}); an unacknowledged message is sent again (same seq) after the next connect.
// One JSON object per line on stdout:
//   {"ev":"connected","id":I,"backend":B,"transport":T,"n":K}   K-th session of client I (K > 1:
//                                                                 socket.io reconnected it)
//   {"ev":"upgraded","id":I,"transport":"websocket"}
//   {"ev":"echo","id":I,"seq":S,"backend":B,"ok":true|false}    ok: the ack carried the message
//   {"ev":"unacked","id":I,"seq":S,"why":W}                   no ack: timed out, or the socket
//                                                                 disconnected first (sent again)
//   {"ev":"disconnected","id":I,"reason":R,"code":C}            C: the WebSocket close code, or null
//   {"ev":"connect_error","id":I,"message":M}
//   {"ev":"stopped"}
// A line "stop" on stdin (or stdin closing) closes every client and exits.
"use strict";

const { io } = require("socket.io-client");

const [url, nWs, nUp] = process.argv.slice(2);
if (!url || nWs === undefined || nUp === undefined) {
  process.stderr.write("usage: node client.js URL N_WEBSOCKET N_UPGRADE\n");
  process.exit(2);
}
const INTERVAL_MS = 100;
const ACK_TIMEOUT_MS = 5000;

const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let stopping = false;

function startClient(id, websocketOnly) {
  const socket = io(url, {
    forceNew: true, // one Manager (one engine, one cookie jar) per client
    transports: websocketOnly ? ["websocket"] : ["polling", "websocket"],
    withCredentials: true,
    // socket.io's reconnection, a little quicker than its 1 s default to keep the test short
    reconnectionDelay: 250,
    reconnectionDelayMax: 1000,
    timeout: 5000,
  });
  const c = { id, socket, sessions: 0, welcomed: false, seq: 1 };

  socket.io.on("open", () => {
    const engine = socket.io.engine;
    engine.on("upgrade", (t) => out({ ev: "upgraded", id, transport: t.name }));
  });
  socket.on("welcome", (w) => {
    c.sessions += 1;
    c.welcomed = true;
    out({
      ev: "connected",
      id,
      backend: w.backend,
      transport: socket.io.engine.transport.name,
      n: c.sessions,
    });
  });
  socket.on("disconnect", (reason, details) => {
    c.welcomed = false;
    // a WebSocket transport's close event: 1006 when the connection just ended, the code of
    // the Close frame when one came (1001 going away, 1012 service restart)
    const code = details && details.context && details.context.code;
    if (!stopping) out({ ev: "disconnected", id, reason, code: code === undefined ? null : code });
  });
  socket.on("connect_error", (e) => out({ ev: "connect_error", id, message: e.message }));
  return c;
}

async function pump(c) {
  while (!stopping) {
    if (!c.welcomed) {
      await sleep(20);
      continue;
    }
    const seq = c.seq;
    const text = `client ${c.id} message ${seq} ` + "x".repeat(seq % 50);
    try {
      const r = await c.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("echo", { seq, text });
      if (stopping) break;
      const ok = !!r && !!r.msg && r.msg.seq === seq && r.msg.text === text;
      out({ ev: "echo", id: c.id, seq, backend: r && r.backend, ok });
      c.seq += 1;
    } catch (e) {
      if (stopping) break;
      out({ ev: "unacked", id: c.id, seq, why: e.message });
    }
    await sleep(INTERVAL_MS);
  }
}

const clients = [];
for (let i = 0; i < Number(nWs) + Number(nUp); i++) {
  clients.push(startClient(i, i < Number(nWs)));
}
const pumps = clients.map(pump);

function stop() {
  if (stopping) return;
  stopping = true;
  for (const c of clients) c.socket.close();
  Promise.all(pumps).then(() => {
    out({ ev: "stopped" });
    process.exit(0);
  });
}
let input = "";
process.stdin.on("data", (d) => {
  input += d;
  if (input.includes("stop\n")) stop();
});
process.stdin.on("end", stop);
