export type { Config } from './config/schema.js';
export { ConfigSchema } from './config/schema.js';
