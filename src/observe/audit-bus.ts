/**
 * The process's one hand-off point for audit events. Whatever emits them (the sign-in endpoints, the
 * admin API, reloads, the access stage) calls `emitAudit`; the process that owns the trail (the single
 * gateway process, or a cluster worker that forwards to its primary) installs the sink. Like the metrics
 * registry it is process-wide, so that modules low in the layering can emit without knowing who writes.
 */

/** One audit event: a stable event name and code (success and failure differ), then plain JSON fields. */
export interface AuditRecord {
  event: string;
  code: string;
  requestId?: string;
  [field: string]: unknown;
}

/** Receives audit events; it must not throw or block. */
export type AuditSink = (record: AuditRecord) => void;

let sink: AuditSink | undefined;

/** Installs (or with `undefined` removes) the process's audit sink. */
export function setAuditSink(next: AuditSink | undefined): void {
  sink = next;
}

/** True when audit events go somewhere: emitters skip building records otherwise. */
export function auditing(): boolean {
  return sink !== undefined;
}

/** Hands `record` to the audit sink, if there is one. Never throws into the caller. */
export function emitAudit(record: AuditRecord): void {
  if (sink === undefined) return;
  try {
    sink(record);
  } catch {
    // A sink failure is the sink's to count and report; the request or action goes on.
  }
}
