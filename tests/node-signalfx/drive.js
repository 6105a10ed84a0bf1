// Drives the official Node.js SignalFlow client (npm `signalfx` 8.x, WebSocket transport)
// against a SignalFlow endpoint and prints ONE JSON document of what the client delivered.
// Run by tests/it/interop_node_signalfx.rs from target/node-signalfx (where `npm ci` installed
// the pinned client).
//
// Usage: node drive.js SCENARIO WS_BASE PROGRAM [START STOP] [--batches N]
//   bounded  execute PROGRAM over [START, STOP) and read until END_OF_CHANNEL
//   invalid  execute PROGRAM (expected invalid) and report the error the client hands over
//   live     execute PROGRAM live, read N data batches, then `close()` the computation (the
//            client sends `detach`) and report
// A watchdog prints what was seen with "ended": "timeout" after 45 s.
'use strict';

const signalfx = require('signalfx');

const [scenario, base, program, start, stop] = process.argv.slice(2);
const batchesArg = process.argv.indexOf('--batches');
const wantBatches = batchesArg > 0 ? Number(process.argv[batchesArg + 1]) : 3;

const report = {
  scenario, handle: null, controls: [], metadata: 0, batches: [], messages: [], error: null, ended: null,
};
let client;
function finish(ended) {
  if (report.ended) return;
  report.ended = ended;
  process.stdout.write(JSON.stringify(report) + '\n', () => {
    try { client.disconnect(); } catch (_e) { /* already closed */ }
    process.exitCode = ended === 'timeout' ? 3 : 0;
    setTimeout(() => process.exit(), 100);
  });
}
setTimeout(() => finish('timeout'), 45000);

client = new signalfx.SignalFlow('interop-token', { signalflowEndpoint: base });
const params = { program, resolution: 1000 };
if (scenario === 'bounded') {
  params.start = Number(start);
  params.stop = Number(stop);
}
const computation = client.execute(params);
computation.stream((err, msg) => {
  if (err) {
    report.error = err;
    return finish('error');
  }
  switch (msg.type) {
    case 'control-message':
      report.controls.push(msg.event);
      if (msg.event === 'JOB_START') report.handle = msg.handle;
      if (msg.event === 'END_OF_CHANNEL' || msg.event === 'CHANNEL_ABORT') finish(msg.event);
      break;
    case 'metadata':
      report.metadata += 1;
      break;
    case 'message':
      report.messages.push(msg.message && msg.message.messageCode);
      break;
    case 'data':
      report.batches.push({ t: msg.logicalTimestampMs, points: msg.data.length });
      if (scenario === 'live' && report.batches.length === wantBatches) {
        computation.close();
        // After the detach nothing more may arrive on the channel.
        setTimeout(() => finish('closed'), 1500);
      }
      break;
    default:
      break;
  }
});
