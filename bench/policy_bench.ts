/**
 * Policy decisions against a 1,000-rule policy: what every connection and
 * request pays. Rules are compiled to maps, so cost should not grow with the
 * number of rules (compare the 10-rule case).
 */
import { parseIp } from "../policy/address.ts";
import { decideAddress, decideConnection, decideRequest, loadPolicyText } from "../policy/mod.ts";

function policyWith(n: number): string {
  const lines = ["version: 1", "network:", "  default: deny", "  allow:"];
  for (let i = 0; i < n; i++) {
    switch (i % 4) {
      case 0:
        lines.push(`    - host${i}.example.com:443`);
        break;
      case 1:
        lines.push(`    - "*.svc${i}.example.net"`);
        break;
      case 2:
        lines.push(`    - "GET,HEAD api${i}.example.org/v1/**"`);
        break;
      default:
        lines.push(`    - 10.${(i >> 8) & 255}.${i & 255}.0/24:5432`);
    }
  }
  lines.push("  deny:", "    - 169.254.169.254", '    - "*.internal.example.com"');
  return lines.join("\n") + "\n";
}

const big = loadPolicyText(policyWith(1000), "bench.yaml").compiled;
const small = loadPolicyText(policyWith(10), "bench.yaml").compiled;
const text1000 = policyWith(1000);

Deno.bench(
  "decideConnection() exact host, 1,000 rules",
  { group: "connection", baseline: true },
  () => {
    decideConnection(big, { kind: "name", name: "host500.example.com" }, 443);
  },
);
Deno.bench("decideConnection() exact host, 10 rules", { group: "connection" }, () => {
  decideConnection(small, { kind: "name", name: "host4.example.com" }, 443);
});
Deno.bench("decideConnection() wildcard at depth 3, 1,000 rules", { group: "connection" }, () => {
  decideConnection(big, { kind: "name", name: "a.b.svc501.example.net" }, 443);
});
Deno.bench("decideConnection() default deny, 1,000 rules", { group: "connection" }, () => {
  decideConnection(big, { kind: "name", name: "nothing.example.io" }, 443);
});
Deno.bench("decideRequest() path glob, 1,000 rules", { group: "request" }, () => {
  decideRequest(big, {
    method: "GET",
    dest: { kind: "name", name: "api502.example.org" },
    port: 443,
    path: "/v1/models/x?y=1",
  });
});
const ip = parseIp("93.184.216.34")!;
Deno.bench("decideAddress() public IP, 250 CIDR rules", { group: "address" }, () => {
  decideAddress(big, ip, 443, "x.example.com");
});
Deno.bench("loadPolicyText() 1,000 rules (parse, validate, compile)", { group: "load" }, () => {
  loadPolicyText(text1000, "bench.yaml");
});
