/** Audit trail test helpers: a key, a trail on a temporary file, and the file's lines. */
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { AuditTrail, type AuditTrailOptions } from '../../src/observe/audit/trail.js';
import { memoryLogger } from './gateway.js';

/** A fresh Ed25519 key pair. */
export function auditKey(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ed25519');
}

/** Opens a trail writing to `file` (keep 3, fsync on checkpoints), with a key of its own unless given. */
export async function openTrail(
  file: string | undefined,
  opts: Partial<AuditTrailOptions> & { maxSize?: number; keep?: number } = {},
): Promise<{ trail: AuditTrail; key: KeyObject; logs: Array<Record<string, unknown>> }> {
  const key = opts.signingKey ?? auditKey().privateKey;
  const { logger, lines } = memoryLogger();
  const { maxSize, keep, ...rest } = opts;
  const trail = await AuditTrail.open({
    ...(file !== undefined
      ? { file: { path: file, maxSize: maxSize ?? 1 << 30, keep: keep ?? 3, fsync: 'checkpoint' as const } }
      : {}),
    signingKey: key,
    keyId: 'k1',
    logger,
    ...rest,
  });
  return { trail, key, logs: lines };
}

/** The lines of a file, without their line ends (a cut-off last line included as it is). */
export function fileLines(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  return lines;
}

/** The parsed lines of a file. */
export function fileRecords(file: string): Array<Record<string, unknown>> {
  return fileLines(file).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** SHA-256 hex of a line. */
export function sha256(line: string): string {
  return createHash('sha256').update(line).digest('hex');
}

/** An access event as the gateway writes it. */
export function accessEvent(i: number, fields: Record<string, unknown> = {}) {
  return {
    event: 'access',
    code: i % 3 === 0 ? 'access.refused' : 'access.allowed',
    requestId: `req-${i}`,
    identity: `user:${i % 5}`,
    email: `user${i % 5}@example.com`,
    route: i % 2 === 0 ? 'airbyte-api' : 'status',
    status: i % 3 === 0 ? 403 : 200,
    client: '10.0.0.1',
    method: 'GET',
    host: 'airbyte.example.com',
    path: `/api/v1/jobs/${i}`,
    ...fields,
  };
}
