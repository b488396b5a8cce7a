/** The self-contained demo: sample backends and `gatehouse demo`. */
export { type Backend, type EchoReply, startEchoBackend, startJobsBackend } from './backends.js';
export { type Demo, type DemoOptions, runDemo, startDemo } from './run.js';
