// The gateway from Node.js (18+) with its built-in fetch and a small SSE parser: create a
// computation, print its first data points with their series' dimensions, drop the connection
// and resume with Last-Event-ID, then stop it.
const GW = process.env.GATEWAY ?? "http://127.0.0.1:8080";
const program = "data('cpu.utilization').mean(by=['region']).publish('A')";
const dims = new Map();
let last;

async function stream(id, count) { // prints the points of `count` data events, resuming after `last`
  const headers = { accept: "text/event-stream", ...(last ? { "last-event-id": last } : {}) };
  const response = await fetch(`${GW}/computations/${id}/events`, { headers });
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of response.body) {
    buffer += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = Object.fromEntries(buffer.slice(0, end).split("\n").map((l) => [l.slice(0, l.indexOf(": ")), l.slice(l.indexOf(": ") + 2)]));
      buffer = buffer.slice(end + 2);
      if (event.id) last = event.id;
      const body = event.data && JSON.parse(event.data);
      if (event.event === "metadata") {
        const own = Object.entries(body.properties).filter(([k]) => !k.startsWith("sf_") && k !== "computationId");
        dims.set(body.tsId, own.map(([k, v]) => `${k}=${v}`).join(" "));
      } else if (event.event === "data") {
        for (const p of body.data) console.log(`data id=${last} t=${body.logicalTimestampMs} ${dims.get(p.tsId) ?? ""} value=${p.value}`);
        if (--count === 0) return; // leaving the loop cancels the body: the connection drops
      }
    }
  }
}

const created = await fetch(`${GW}/computations`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ program, start: "-1m", resolution: "1s" }),
});
const { id } = await created.json();
await stream(id, 3);
console.log(`resumed after id ${last}`);
await stream(id, 2);
const stopped = await fetch(`${GW}/computations/${id}?reason=example+done`, { method: "DELETE" });
if (!stopped.ok) throw new Error(`stop: HTTP ${stopped.status}`);
console.log(`stopped ${id}`);
