/**
 * The audit line format, its hash chain and its signed checkpoints.
 *
 * One line per event, JSON, ending in `\n`, whose first two members are always the chain fields:
 *
 *   {"seq":42,"prev":"<64 hex>","time":"2026-12-07T10:00:00.000Z","event":"access","code":"access.allowed",…}
 *
 * `seq` counts lines from 1 along the whole chain (across rotated files); `prev` is the SHA-256 (hex) of
 * the previous line's bytes without its `\n`, and 64 zeros on the first line of a chain. A checkpoint
 * is a line with `"event":"audit","code":"audit.checkpoint"` whose last member is `"sig"`: an Ed25519
 * signature (base64url) over every byte of the line before `,"sig":"`, which holds its `seq`, its `prev`
 * (the chain head before it), its time, reason and key id. Every file starts and ends with a checkpoint.
 */
import { createPublicKey, hash, type KeyObject, sign, verify } from 'node:crypto';

/** `prev` of the first line of a chain. */
export const GENESIS = '0'.repeat(64);

/** The event name of the trail's own lines (checkpoints, overflow, recovery). */
export const AUDIT_EVENT = 'audit';

/** The code of a checkpoint line. */
export const CHECKPOINT_CODE = 'audit.checkpoint';

/** Why a checkpoint was written. */
export type CheckpointReason = 'open' | 'lines' | 'interval' | 'rotate' | 'close';

/** The chain fields at the start of every line; anything else is not an audit line. */
export const CHAIN_PREFIX = /^\{"seq":(\d{1,15}),"prev":"([0-9a-f]{64})",/;

const SIG_MARK = ',"sig":"';
const B64URL = /^[A-Za-z0-9_-]+$/;

/** The SHA-256 (hex) of one line's text without its line end. */
export function lineHash(line: string | Buffer): string {
  // The one-shot form costs half of createHash().update().digest() for a line this size.
  return hash('sha256', line, 'hex');
}

/** The position of a chain: the next line's sequence number and `prev`. */
export interface ChainHead {
  seq: number;
  prev: string;
}

/**
 * A new line (without `\n`) from the serialized record `body` (a JSON object text, `{…}`): the chain
 * fields, then `time` when the body has none, then the body's members.
 */
export function chainLine(head: ChainHead, body: string, time: string | undefined): string {
  const lead = `{"seq":${head.seq},"prev":"${head.prev}",`;
  const rest = body.length <= 2 ? '}' : body.slice(1);
  if (time === undefined) return rest === '}' ? `${lead.slice(0, -1)}}` : lead + rest;
  return rest === '}' ? `${lead}"time":"${time}"}` : `${lead}"time":"${time}",${rest}`;
}

/** Builds a signed checkpoint line (without `\n`) at the chain position `head`. */
export function checkpointLine(
  head: ChainHead,
  time: string,
  reason: CheckpointReason,
  key: KeyObject,
  keyId: string,
): string {
  const signed = `{"seq":${head.seq},"prev":"${head.prev}","time":"${time}","event":"${AUDIT_EVENT}","code":"${CHECKPOINT_CODE}","reason":"${reason}","keyId":${JSON.stringify(keyId)}`;
  const sig = sign(null, Buffer.from(signed), key).toString('base64url');
  return `${signed}${SIG_MARK}${sig}"}`;
}

/** A checkpoint line taken apart: what was signed and the signature. */
export interface ParsedCheckpoint {
  seq: number;
  prev: string;
  keyId: string;
  reason: string;
  signed: string;
  sig: Buffer;
}

/**
 * Takes a checkpoint line apart, or returns undefined when the line is not one (not the checkpoint
 * code, or its signature is not the last member).
 */
export function parseCheckpoint(line: string): ParsedCheckpoint | undefined {
  if (!line.includes(`"code":"${CHECKPOINT_CODE}"`)) return undefined;
  const at = line.lastIndexOf(SIG_MARK);
  if (at < 0 || !line.endsWith('"}')) return undefined;
  const sigText = line.slice(at + SIG_MARK.length, -2);
  if (!B64URL.test(sigText)) return undefined;
  const signed = line.slice(0, at);
  let fields: unknown;
  try {
    fields = JSON.parse(`${signed}}`);
  } catch {
    return undefined;
  }
  const f = fields as Record<string, unknown>;
  if (f.event !== AUDIT_EVENT || f.code !== CHECKPOINT_CODE) return undefined;
  if (typeof f.seq !== 'number' || typeof f.prev !== 'string' || typeof f.keyId !== 'string')
    return undefined;
  return {
    seq: f.seq,
    prev: f.prev,
    keyId: f.keyId,
    reason: typeof f.reason === 'string' ? f.reason : '',
    signed,
    sig: Buffer.from(sigText, 'base64url'),
  };
}

/** Whether the checkpoint's signature is valid under `key` (an Ed25519 public or private key). */
export function checkpointSignatureValid(cp: ParsedCheckpoint, key: KeyObject): boolean {
  try {
    const pub = key.type === 'private' ? createPublicKey(key) : key;
    return verify(null, Buffer.from(cp.signed), pub, cp.sig);
  } catch {
    return false;
  }
}

/** The public JWK of an Ed25519 key (private or public), tagged with its key id for checkpoints. */
export function publicJwk(key: KeyObject, keyId: string): Record<string, unknown> {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const jwk = pub.export({ format: 'jwk' }) as Record<string, unknown>;
  return { ...jwk, kid: keyId, use: 'sig', alg: 'EdDSA' };
}
