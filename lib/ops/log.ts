/**
 * Operational logs (start, reload, shutdown, errors), separate from the
 * audit stream: readable text on a terminal, one JSON object per line
 * otherwise (journald, log shippers), or as `--log-format` says.
 *
 * @module
 */

/** Where operational messages go. */
export type Logger = (message: string, fields?: Record<string, unknown>) => void;

/** Picks the format: `text` on a terminal, `json` when stderr is not one. */
export function resolveLogFormat(flag: string | undefined, isTerminal: boolean): "text" | "json" {
  if (flag === "text" || flag === "json") return flag;
  if (flag !== undefined && flag !== "auto") {
    throw new Error(`--log-format "${flag}" is not text, json or auto`);
  }
  return isTerminal ? "text" : "json";
}

/** A logger writing to stderr in the given format. */
export function makeLogger(
  format: "text" | "json",
  write: (line: string) => void = (l) => console.error(l),
): Logger {
  if (format === "text") {
    return (message) => write(message);
  }
  return (message, fields) =>
    write(JSON.stringify({ time: new Date().toISOString(), msg: message, ...fields }));
}
