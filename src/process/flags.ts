/**
 * The Node.js flags a gateway process runs with. `bin/gatehouse` starts `node` with them (its second
 * line, for sh; a test keeps the two equal), and a cluster primary passes them to every worker it
 * forks, however the primary itself was started.
 *
 * `--single-threaded-gc`: V8 does its garbage collection on the main thread instead of handing marking,
 * scavenging and sweeping to helper threads. A gateway is one busy event loop per core (`server.workers`),
 * so those helpers only compete with the event loops for the same cores and add hand-offs between
 * threads. Streaming large bodies is where it shows: every socket read allocates a fresh 64 KiB buffer,
 * the external memory behind it triggers a collection many times a second, and running those on the main
 * thread cut the CPU per 1 MiB response by about a fifth in the benchmark (README, "Benchmark").
 */
export const PROCESS_FLAGS: readonly string[] = ['--single-threaded-gc'];

/** `execArgv` with every flag of PROCESS_FLAGS it lacks appended. */
export function withProcessFlags(execArgv: readonly string[]): string[] {
  return [...execArgv, ...PROCESS_FLAGS.filter((flag) => !execArgv.includes(flag))];
}
