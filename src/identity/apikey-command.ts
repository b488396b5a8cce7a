/**
 * `gatehouse apikey create`: makes a new API key, prints it once, and prints the `identity.apiKeys`
 * entry (with only the key's hash) to paste into the configuration. Gatehouse never stores the key.
 */
import { ApiKeyExpires } from '../config/schema.js';
import { apiKeyExpiry, generateApiKey } from './apikeys.js';

/** Where the command writes (the same shape as the CLI's `CliIo`). */
export interface ApiKeyCommandIo {
  out(text: string): void;
  err(text: string): void;
  /** Clock for rejecting an expiry in the past (default `Date.now`). */
  now?: () => number;
}

/** Usage text of the command. */
export const APIKEY_USAGE = `Usage: gatehouse apikey create --id ID --subject SUBJECT [options]

Creates an API key, prints it once, and prints the identity.apiKeys entry for the configuration
(which holds only the key's sha256 hash).

Options:
  --id ID               key name, e.g. etl-agent (letters, digits, _ . -)
  --subject SUBJECT     the identity's subject, e.g. agent:etl
  --groups a,b          groups of the identity
  --expires DATE        ISO date (2027-01-01, start of the day in UTC) or date-time after which the key is refused
  --routes a,b          route names the key may be used on (default: any route)
`;

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

class UsageError extends Error {}

function list(value: string, what: string, pattern?: RegExp): string[] {
  const items = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (items.length === 0) throw new UsageError(`--${what} needs at least one value`);
  if (pattern) {
    for (const item of items) {
      if (!pattern.test(item)) throw new UsageError(`--${what}: "${item}" is not a valid name`);
    }
  }
  return items;
}

/** YAML flow sequence of plain or quoted scalars. JSON strings are valid YAML double-quoted scalars. */
function yamlList(items: readonly string[]): string {
  return `[${items.map((s) => (NAME.test(s) ? s : JSON.stringify(s))).join(', ')}]`;
}

/**
 * Runs `gatehouse apikey ...` with the arguments after `apikey`. Returns the exit code: 0 success,
 * 2 usage error.
 */
export async function runApiKeyCommand(argv: readonly string[], io: ApiKeyCommandIo): Promise<number> {
  const [sub, ...args] = argv;
  if (sub === undefined || sub === 'help' || sub === '-h' || sub === '--help') {
    io.out(APIKEY_USAGE);
    return sub === undefined ? 2 : 0;
  }
  try {
    if (sub !== 'create') throw new UsageError(`unknown apikey command "${sub}"`);
    const opts = new Map<string, string>();
    for (let i = 0; i < args.length; i++) {
      const arg = args[i]!;
      const eq = arg.indexOf('=');
      const name = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
      if (!['--id', '--subject', '--groups', '--expires', '--routes'].includes(name)) {
        throw new UsageError(`unknown argument ${arg}`);
      }
      const value = eq > 0 && arg.startsWith('--') ? arg.slice(eq + 1) : args[++i];
      if (value === undefined) throw new UsageError(`${name} needs a value`);
      if (opts.has(name)) throw new UsageError(`${name} given twice`);
      opts.set(name, value);
    }
    const id = opts.get('--id');
    const subject = opts.get('--subject');
    if (id === undefined) throw new UsageError('--id is required');
    if (!NAME.test(id))
      throw new UsageError(`--id "${id}" must start with a letter or digit and use only A-Z a-z 0-9 _ . -`);
    if (subject === undefined || subject.trim() === '') throw new UsageError('--subject is required');
    const groupsArg = opts.get('--groups');
    const groups = groupsArg === undefined ? [] : list(groupsArg, 'groups');
    const routesArg = opts.get('--routes');
    const routes = routesArg === undefined ? undefined : list(routesArg, 'routes', NAME);
    const expires = opts.get('--expires');
    if (expires !== undefined) {
      // The same check as the configuration's, so that the printed entry always validates.
      const at = ApiKeyExpires.safeParse(expires).success ? apiKeyExpiry(expires) : undefined;
      if (at === undefined)
        throw new UsageError(
          `--expires "${expires}" is not an ISO date (2027-01-01) or date-time (2027-01-01T09:00:00Z)`,
        );
      if (at <= (io.now ?? Date.now)()) throw new UsageError(`--expires ${expires} is in the past`);
    }

    const { key, hashLine } = generateApiKey(id);
    const fields = [`id: ${id}`, `hash: "${hashLine}"`, `subject: ${JSON.stringify(subject)}`];
    if (groups.length > 0) fields.push(`groups: ${yamlList(groups)}`);
    if (expires !== undefined) fields.push(`expires: "${expires}"`);
    if (routes !== undefined) fields.push(`routes: ${yamlList(routes)}`);
    io.out(
      `API key for ${id}. It is shown only this once: store it now (Gatehouse keeps only its hash).\n\n` +
        `  ${key}\n\n` +
        'Add this entry under identity.apiKeys in the configuration:\n\n' +
        `  - { ${fields.join(', ')} }\n\n` +
        'Clients send it as "Authorization: Bearer <key>" or in the identity.apiKeyHeader header.\n',
    );
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`gatehouse apikey: ${err.message}\n\n${APIKEY_USAGE}`);
      return 2;
    }
    throw err;
  }
}
