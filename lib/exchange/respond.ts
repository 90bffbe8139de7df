/**
 * The responses sluice itself writes: denials that say why, and upstream
 * failures that say what failed. A person who hits a wall should learn which
 * rule stopped them and where it is written, not stare at a bare EOF.
 *
 * Reasons never contain secret values (policy/decide.ts guarantees the same
 * for decisions), so they are safe to show to the workload.
 *
 * @module
 */
import { concatBytes } from "../bytes.ts";
import type { Decision } from "../../policy/mod.ts";
import { type OutcomeCode, OUTCOMES } from "../../policy/outcomes.ts";

/** The header naming sluice's verdict, reason code and rule on every response sluice writes. */
export const DECISION_HEADER = "x-sluice-decision";

/** The header value for a decision: `deny; code=deny-rule; rule=policy.yaml:12`. */
export function decisionHeader(d: Pick<Decision, "verdict" | "code" | "rule">): string {
  return `${d.verdict}; code=${d.code}; rule=${d.rule.at.replace(/[^\x20-\x7e]/g, "?")}`;
}

/** Body text for a denial. */
export function denialText(d: Pick<Decision, "reason" | "rule">): string {
  return `sluice denied this request: ${d.reason}\n` +
    `rule: ${d.rule.source} (${d.rule.at})\n` +
    `to see the full decision: sluice explain --policy POLICY URL\n`;
}

/** The refusal for a denied request, with the status the outcome table gives its code. */
export function denyResponse(
  d: Pick<Decision, "verdict" | "code" | "reason" | "rule">,
  status: number = OUTCOMES[d.code].status,
): Response {
  return new Response(denialText(d), {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", [DECISION_HEADER]: decisionHeader(d) },
  });
}

/** A response sluice writes for its own errors (400 bad request, 502 upstream failed, 504 timeout). */
export function errorResponse(status: number, code: OutcomeCode, message: string): Response {
  return new Response(`sluice: ${message}\n`, {
    status,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      [DECISION_HEADER]: `error; code=${code}`,
    },
  });
}

/** The same denial as raw HTTP/1.1 bytes, for connections sluice answers before any HTTP server runs (CONNECT). */
export function rawDenial(d: Pick<Decision, "verdict" | "code" | "reason" | "rule">): Uint8Array {
  const body = new TextEncoder().encode(denialText(d));
  const head = new TextEncoder().encode(
    `HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\n` +
      `${DECISION_HEADER}: ${
        decisionHeader(d)
      }\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n`,
  );
  return concatBytes([head, body]);
}

/** A raw HTTP/1.1 error response with a short text body. */
export function rawError(
  status: number,
  reasonPhrase: string,
  code: OutcomeCode,
  message: string,
): Uint8Array {
  const body = `sluice: ${message}\n`;
  return new TextEncoder().encode(
    `HTTP/1.1 ${status} ${reasonPhrase}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
      `${DECISION_HEADER}: error; code=${code}\r\ncontent-length: ${
        new TextEncoder().encode(body).length
      }\r\n` +
      `connection: close\r\n\r\n${body}`,
  );
}

/** A fatal TLS alert record, access_denied (49): what a passthrough denial sends instead of a bare close. */
export const TLS_ACCESS_DENIED_ALERT: Uint8Array = new Uint8Array([
  0x15,
  0x03,
  0x03,
  0x00,
  0x02,
  0x02,
  49,
]);
/** A fatal TLS alert, unrecognized_name (112): the ClientHello carried no usable SNI. */
export const TLS_UNRECOGNIZED_NAME_ALERT: Uint8Array = new Uint8Array([
  0x15,
  0x03,
  0x03,
  0x00,
  0x02,
  0x02,
  112,
]);
