// One socket.io 4 backend ("pod") for tests/socketio.rs.
//
//   node server.js HOST PORT NAME        (PORT 0 = any free port)
//
// Every socket gets a `welcome` {backend, transport} when it connects, and every `echo` message
// is acknowledged with {backend, msg}: the ack says which backend served it and carries the
// message back. Prints one JSON object per line on stdout, each with `backend` = NAME:
//   {"ev":"listening","port":P}
//   {"ev":"connection","sid":S,"transport":"polling"|"websocket"}
//   {"ev":"upgrade","sid":S,"transport":"websocket"}
//   {"ev":"disconnect","sid":S,"reason":R}
//   {"ev":"engine_error","code":C,"message":M}   e.g. "Session ID unknown": a request of a
//                                                 session reached the wrong backend
// Exits when its stdin closes, so it never outlives the test that started it.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const [host, port, name] = process.argv.slice(2);
if (!host || port === undefined || !name) {
  process.stderr.write("usage: node server.js HOST PORT NAME\n");
  process.exit(2);
}

const out = (o) => process.stdout.write(JSON.stringify({ backend: name, ...o }) + "\n");

// Anything outside /socket.io/ answers the backend's name (handy when debugging by hand).
const httpServer = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(name);
});
const io = new Server(httpServer);

io.on("connection", (socket) => {
  const transport = socket.conn.transport.name;
  out({ ev: "connection", sid: socket.id, transport });
  socket.conn.once("upgrade", (t) => out({ ev: "upgrade", sid: socket.id, transport: t.name }));
  socket.emit("welcome", { backend: name, transport });
  socket.on("echo", (msg, ack) => {
    if (typeof ack === "function") ack({ backend: name, msg });
  });
  socket.on("disconnect", (reason) => out({ ev: "disconnect", sid: socket.id, reason }));
});

io.engine.on("connection_error", (err) => {
  out({ ev: "engine_error", code: err.code, message: err.message });
});

httpServer.listen(Number(port), host, () => {
  out({ ev: "listening", port: httpServer.address().port });
});

process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
