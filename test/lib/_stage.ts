/**
 * Shared by the stage-level (Playbook-style) tests: the real metrics and broker a stage reads,
 * without a server around them.
 */
import type { CompiledPolicy } from "../../policy/mod.ts";
import { type Broker, makeBroker } from "../../lib/credentials/broker.ts";
import { SecretValue } from "../../lib/credentials/secrets.ts";
import { Metrics } from "../../lib/ops/metrics.ts";

/** Metrics with no server behind their gauges. */
export function stageMetrics(): Metrics {
  return new Metrics({
    activeConnections: () => 0,
    leafCache: () => ({ size: 0, hits: 0, misses: 0, mints: 0 }) as never,
    policyGeneration: () => 1,
    lastReloadOk: () => 1,
    stages: () => [],
    clients: () => 0,
  });
}

/** A broker for one credential KEY with the given placeholder and real value. */
export function oneKeyBroker(
  compiled: CompiledPolicy,
  placeholder: string,
  secret: string,
): Broker {
  return makeBroker(
    compiled.credentials,
    new Map([["KEY", placeholder]]),
    new Map([["KEY", new SecretValue("KEY", secret)]]),
  );
}
