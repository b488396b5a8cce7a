/**
 * Runs the gateway's command line from the sources (through tsx) when `dist/` is not built.
 * Usage: node --import tsx bench/peers/gatehouse-cli.ts start -c FILE
 */
import { main } from '../../src/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => {
    if (typeof code === 'number') process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`gatehouse: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
