/**
 * Verifying audit files: the hash chain line by line, across the files given oldest first (a rotated
 * `FILE.2 FILE.1 FILE` is one chain), that each file ends in a checkpoint, and, with keys, every
 * checkpoint's signature. Stops at the first bad line and says why.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { GatehouseError } from '../../errors.js';
import { CHECKPOINT_CODE, checkpointSignatureValid, GENESIS, lineHash, parseCheckpoint } from './chain.js';
import { readWholeLines } from './lines.js';

/** A checkpoint key: its key id (undefined: a key used whatever id a checkpoint names) and public key. */
export interface VerifyKey {
  kid: string | undefined;
  key: KeyObject;
}

/** Why a line is bad; stable, for scripts and tests. */
export type VerifyProblemCode =
  | 'edited'
  | 'sequence-gap'
  | 'reordered'
  | 'cut-off'
  | 'no-final-checkpoint'
  | 'truncated'
  | 'bad-start'
  | 'not-continued'
  | 'not-audit-line'
  | 'bad-signature'
  | 'unknown-key'
  | 'unreadable';

/** The first bad line found. */
export interface VerifyProblem {
  file: string;
  /** 1-based line number in `file`. */
  line: number;
  code: VerifyProblemCode;
  message: string;
}

/** What was checked in one file. */
export interface VerifiedFile {
  file: string;
  lines: number;
  firstSeq: number | undefined;
  lastSeq: number | undefined;
  checkpoints: number;
}

/** The outcome of `verifyFiles`. */
export interface VerifyReport {
  ok: boolean;
  problem?: VerifyProblem;
  /** The files read, up to and including the one with the problem. */
  files: VerifiedFile[];
  /** Whether checkpoint signatures were checked (keys were given). */
  signaturesChecked: boolean;
  /** `live` only: lines at the end of the last file that no checkpoint covers yet. */
  uncovered: number;
}

/** What `verifyFiles` checks besides the chain. */
export interface VerifyOptions {
  /** Checkpoint keys; without any, signatures are not checked. */
  keys?: readonly VerifyKey[];
  /**
   * The last file is still being written: it may end at a periodic checkpoint, with lines after its last
   * checkpoint, or with a line being written (these are counted in `uncovered`, not checked by a signature).
   */
  live?: boolean;
}

/** A key file that cannot be used. */
export class AuditKeyError extends GatehouseError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('GH_AUDIT_KEY', 0, message, options);
  }
}

/** The Ed25519 keys of a JWK or a JWKS (public or private keys; a private key gives its public half). */
export function keysFromJwks(json: unknown): VerifyKey[] {
  const list =
    json !== null && typeof json === 'object' && Array.isArray((json as { keys?: unknown }).keys)
      ? ((json as { keys: unknown[] }).keys as unknown[])
      : [json];
  const keys: VerifyKey[] = [];
  for (const jwk of list) {
    const j = jwk as Record<string, unknown> | null;
    if (j === null || typeof j !== 'object' || j.kty !== 'OKP' || j.crv !== 'Ed25519') continue;
    try {
      // Only the public members: a private JWK would otherwise be imported as a private key.
      const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: j.x } as never, format: 'jwk' });
      keys.push({ kid: typeof j.kid === 'string' ? j.kid : undefined, key });
    } catch (err) {
      throw new AuditKeyError(
        `not a usable Ed25519 JWK${typeof j.kid === 'string' ? ` (kid ${j.kid})` : ''}`,
        {
          cause: err,
        },
      );
    }
  }
  if (keys.length === 0) throw new AuditKeyError('no Ed25519 key in it (expected a JWK or a JWKS)');
  return keys;
}

/** Reads the keys of a JWK or JWKS file. */
export async function readKeyFile(file: string): Promise<VerifyKey[]> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new AuditKeyError(`${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    return keysFromJwks(json);
  } catch (err) {
    throw new AuditKeyError(`${file}: ${(err as Error).message}`, { cause: err });
  }
}

const SEQ_LEAD = Buffer.from('{"seq":');
const PREV_LEAD = Buffer.from(',"prev":"');
const CHECKPOINT_MARK = Buffer.from(`"code":"${CHECKPOINT_CODE}"`);

/** The chain fields at the start of a line (bytes `[start, end)`), or undefined when they are not there. */
function chainFields(buf: Buffer, start: number, end: number): { seq: number; prev: string } | undefined {
  if (end - start < SEQ_LEAD.length + PREV_LEAD.length + 66) return undefined;
  if (buf.compare(SEQ_LEAD, 0, SEQ_LEAD.length, start, start + SEQ_LEAD.length) !== 0) return undefined;
  let i = start + SEQ_LEAD.length;
  let seq = 0;
  const digits = i;
  while (i < end && buf[i]! >= 0x30 && buf[i]! <= 0x39 && i - digits < 15)
    seq = seq * 10 + (buf[i++]! - 0x30);
  if (i === digits || (buf[digits] === 0x30 && i - digits > 1)) return undefined;
  if (buf.compare(PREV_LEAD, 0, PREV_LEAD.length, i, i + PREV_LEAD.length) !== 0) return undefined;
  i += PREV_LEAD.length;
  const prev = buf.toString('latin1', i, i + 64);
  if (!/^[0-9a-f]{64}$/.test(prev) || buf[i + 64] !== 0x22 || buf[i + 65] !== 0x2c) return undefined;
  return { seq, prev };
}

/** The previous line, as far as the next one needs it. */
interface Previous {
  file: string;
  line: number;
  seq: number;
  hash: string;
  /** A checkpoint whose signature was checked and found valid: it cannot be the edited line. */
  signedOk: boolean;
}

/** Thrown inside the line loop to stop at the first problem. */
class Stop {
  constructor(readonly problem: VerifyProblem) {}
}

/**
 * Verifies audit files given oldest first, as one chain (a file starting a new chain, at seq 1, may
 * follow a file that ended in a checkpoint). Without keys the chain is checked and signatures are not.
 */
export async function verifyFiles(
  files: readonly string[],
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const keys = options.keys ?? [];
  const signaturesChecked = keys.length > 0;
  const report: VerifyReport = { ok: true, files: [], signaturesChecked, uncovered: 0 };
  let previous: Previous | undefined;
  // A line whose seq jumped ahead: a gap, unless the next line holds the missing seq (a swap).
  let pendingJump: { file: string; line: number; seq: number; expected: number } | undefined;

  const keyFor = (kid: string): KeyObject | undefined =>
    (keys.find((k) => k.kid === kid) ?? keys.find((k) => k.kid === undefined))?.key;

  const problem = (file: string, line: number, code: VerifyProblemCode, message: string): never => {
    throw new Stop({ file, line, code, message });
  };

  // The line before does not hash to this line's prev: one of the two was edited. A checkpoint whose
  // signature holds was not, so then it is this one; otherwise the content of the line before.
  const blameEdit = (before: Previous, file: string, line: number): never => {
    if (before.signedOk) {
      problem(file, line, 'edited', 'its prev does not match the hash of the line before: edited');
    }
    return problem(
      before.file,
      before.line,
      'edited',
      'edited: its hash does not match the prev of the next line',
    );
  };

  const settleJump = (nextSeq: number | undefined): void => {
    if (pendingJump === undefined) return;
    const j = pendingJump;
    pendingJump = undefined;
    if (nextSeq === j.expected) {
      problem(
        j.file,
        j.line,
        'reordered',
        `seq ${j.seq} comes before seq ${j.expected}: lines were reordered`,
      );
    }
    problem(
      j.file,
      j.line,
      'sequence-gap',
      `sequence gap: expected seq ${j.expected}, found ${j.seq}: line(s) deleted (or moved) before this line`,
    );
  };

  try {
    for (let f = 0; f < files.length; f++) {
      const file = files[f]!;
      const info: VerifiedFile = { file, lines: 0, firstSeq: undefined, lastSeq: undefined, checkpoints: 0 };
      report.files.push(info);
      let lineNo = 0;
      let lastCheckpoint = 0;
      let lastReason = '';
      const live = options.live === true && f === files.length - 1;
      let tail: Buffer = Buffer.alloc(0);
      try {
        tail = await readWholeLines(file, (buf, end) => {
          let pos = 0;
          // The next checkpoint mark in the block, searched again only once passed: one scan per block.
          let mark = -1;
          while (pos < end) {
            const nl = buf.indexOf(0x0a, pos);
            lineNo++;
            const fields = chainFields(buf, pos, nl);
            settleJump(fields?.seq);
            if (fields === undefined) {
              problem(
                file,
                lineNo,
                'not-audit-line',
                'not an audit line (no chain fields at its start): edited or damaged',
              );
            }
            const { seq, prev } = fields!;
            if (mark !== -2 && mark < pos) {
              mark = buf.indexOf(CHECKPOINT_MARK, pos);
              if (mark < 0 || mark >= end) mark = -2;
            }
            const isCheckpoint = mark >= pos && mark < nl;
            if (lineNo === 1) {
              info.firstSeq = seq;
              const startsChain = seq === 1 && prev === GENESIS;
              if (
                previous !== undefined &&
                !startsChain &&
                seq === previous.seq + 1 &&
                prev !== previous.hash
              ) {
                blameEdit(previous, file, lineNo);
              }
              if (previous !== undefined && !startsChain && seq !== previous.seq + 1) {
                problem(
                  file,
                  1,
                  'not-continued',
                  `does not continue ${previous.file} (expected seq ${previous.seq + 1} after its last line, found ${seq}): give the files oldest first, none missing`,
                );
              }
              if (previous === undefined && !isCheckpoint) {
                problem(
                  file,
                  1,
                  'bad-start',
                  'does not start with a checkpoint: lines were removed from its start',
                );
              }
            } else if (previous !== undefined) {
              if (seq !== previous.seq + 1) {
                if (seq < previous.seq + 1) {
                  problem(
                    file,
                    lineNo,
                    'reordered',
                    `seq ${seq} comes after seq ${previous.seq}: lines were reordered or repeated`,
                  );
                }
                pendingJump = { file, line: lineNo, seq, expected: previous.seq + 1 };
              } else if (prev !== previous.hash) {
                blameEdit(previous, file, lineNo);
              }
            }
            let signedOk = false;
            if (isCheckpoint) {
              const text = buf.toString('utf8', pos, nl);
              const cp = parseCheckpoint(text);
              if (cp === undefined || cp.seq !== seq || cp.prev !== prev) {
                problem(file, lineNo, 'edited', 'a checkpoint line that is not well formed: edited');
              }
              if (signaturesChecked) {
                const key = keyFor(cp!.keyId);
                if (key === undefined) {
                  problem(
                    file,
                    lineNo,
                    'unknown-key',
                    `checkpoint signed with unknown key id "${cp!.keyId}"`,
                  );
                }
                if (!checkpointSignatureValid(cp!, key!)) {
                  problem(
                    file,
                    lineNo,
                    'bad-signature',
                    'checkpoint signature is not valid: edited or forged',
                  );
                }
                signedOk = true;
              }
              lastCheckpoint = lineNo;
              lastReason = cp!.reason;
              info.checkpoints++;
            }
            const hash = lineHash(buf.subarray(pos, nl));
            previous = { file, line: lineNo, seq, hash, signedOk };
            info.lastSeq = seq;
            info.lines = lineNo;
            pos = nl + 1;
          }
        });
      } catch (err) {
        if (err instanceof Stop) throw err;
        problem(file, lineNo + 1, 'unreadable', `cannot read: ${(err as Error).message}`);
      }
      settleJump(undefined);
      if (live) {
        report.uncovered = lineNo - lastCheckpoint + (tail.length > 0 ? 1 : 0);
        if (lastCheckpoint === 0) problem(file, 1, 'no-final-checkpoint', 'no checkpoint at all');
        continue;
      }
      if (tail.length > 0) {
        problem(
          file,
          lineNo + 1,
          'cut-off',
          'cut-off line (no line end): the file was truncated or a write was interrupted',
        );
      }
      if (lineNo === 0) problem(file, 1, 'cut-off', 'empty file: no checkpoint');
      if (lastCheckpoint !== lineNo) {
        problem(
          file,
          lastCheckpoint + 1,
          'no-final-checkpoint',
          `line(s) ${lastCheckpoint + 1}-${lineNo} follow the last checkpoint${lastCheckpoint > 0 ? ` (line ${lastCheckpoint})` : ''} without a new one: appended, or the file was cut short`,
        );
      }
      // A file ends at its rotation or at a clean shutdown; a periodic checkpoint last means the lines
      // after it were cut away (or the file is still being written: `live`).
      if (lastReason !== 'close' && lastReason !== 'rotate') {
        problem(
          file,
          lineNo,
          'truncated',
          `ends at a periodic checkpoint (${lastReason}), not at a rotation or close: lines after it were removed, or the file is still being written (--live)`,
        );
      }
    }
  } catch (err) {
    if (!(err instanceof Stop)) throw err;
    report.ok = false;
    report.problem = err.problem;
  }
  return report;
}
