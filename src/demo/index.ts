/** The self-contained demo: a development OpenID provider, sample backends and `gatehouse demo`. */
export { type Backend, type EchoReply, startEchoBackend, startJobsBackend } from './backends.js';
export { type DemoIdp, type DemoUser, startDemoIdp } from './idp.js';
export { type Demo, type DemoOptions, demoInstructions, runDemo, startDemo } from './run.js';
