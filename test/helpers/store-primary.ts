/**
 * A stand-in cluster primary for test/state-ipc.test.ts, started with `child_process.fork`: it holds a
 * MemoryStore on a clock the test moves and answers store requests with the primary's own
 * `serveStoreRequest`. With the argument `silent` it receives requests but never answers them.
 * Control messages (`{ test: … }`): `advance` moves the clock by `ms` (answered with `advanced`);
 * `exit` ends the process. It says `ready` once it listens, and in silent mode `received` per request.
 */
import { isWorkerMessage } from '../../src/process/ipc.js';
import { type StorePeer, serveStoreRequest } from '../../src/state/ipc.js';
import { MemoryStore } from '../../src/state/memory.js';
import type { StoreReply } from '../../src/state/wire.js';

/** Messages of the test protocol, next to the store requests on the same channel. */
type ControlMessage = { test: 'advance'; ms: number } | { test: 'exit' };

function isControl(message: unknown): message is ControlMessage {
  return typeof message === 'object' && message !== null && 'test' in message;
}

function main(): void {
  const send = process.send?.bind(process);
  if (send === undefined) throw new Error('store-primary must be started with an IPC channel (fork)');
  let now = 1_700_000_000_000;
  const store = new MemoryStore({ now: () => now, sweepInterval: 0 });
  const silent = process.argv[2] === 'silent';
  const peer: StorePeer = {
    send: (message: StoreReply, handle: undefined, callback: (err: Error | null) => void) =>
      send(message, handle, {}, callback),
  };
  let received = 0;
  process.on('message', (message: unknown) => {
    if (isWorkerMessage(message) && message.gatehouse === 'store') {
      received++;
      if (silent) send({ test: 'received', count: received });
      else void serveStoreRequest(peer, store, message);
      return;
    }
    if (!isControl(message)) return;
    if (message.test === 'advance') {
      now += message.ms;
      send({ test: 'advanced', now });
    } else if (message.test === 'exit') process.exit(0);
  });
  // The test's end of the channel closed: nothing more can arrive.
  process.on('disconnect', () => process.exit(0));
  send({ test: 'ready' });
}

main();
