/**
 * The sluice policy language: parse, validate, compile and decide. Pure: no
 * I/O, no clock, no randomness, so every decision is table-testable.
 *
 * @module
 */
export * from "./errors.ts";
export * from "./types.ts";
export * from "./load.ts";
export * from "./compile.ts";
export * from "./decide.ts";
export { formatHostPattern, normalizeHostname, parseHostPattern } from "./host.ts";
export { formatRule } from "./rules.ts";
export * from "./explain.ts";
