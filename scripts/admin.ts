// `npm run admin -- <command>`: the operator's tool for tenants and API keys. It calls the Edge's
// AdminService at COWRIE_EDGE_URL (default http://127.0.0.1:COWRIE_EDGE_PORT) with the operator
// token from COWRIE_OPERATOR_TOKEN, else from <COWRIE_DATA_DIR>/operator-token (which the Edge
// writes on its first start when the variable is unset). Prints plain lines; exit code 0 on
// success, 1 when the call failed, 2 on a usage or configuration error.
import { readFile } from "node:fs/promises";
import * as path from "node:path";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { AdminService, ApiKeyScope, type ApiKey, type Tenant } from "../gen/cowrie/edge/v1/admin_pb.js";
import { OPERATOR_TOKEN_FILE } from "../services/edge/auth.js";
import { ConfigError, loadConfig, type Config } from "../services/runtime/config.js";

const USAGE = `usage: npm run admin -- <command>
  create-tenant <name> [--live]            a tenant and its first read-write API key; sandbox
                                           (FundWallet allowed) unless --live
  create-key <tenant_id> [--read-only] [--label <text>] [--rate <per second>] [--burst <size>]
  revoke-key <key_id>                      calls with the key fail at once (within 2 s on other Edge processes)
  list-keys <tenant_id>                    the tenant's keys, without secrets
  list-tenants                             every tenant, oldest first
environment: COWRIE_EDGE_URL or COWRIE_EDGE_PORT; COWRIE_OPERATOR_TOKEN or COWRIE_DATA_DIR/operator-token`;

function usage(problem?: string): never {
  if (problem) process.stderr.write(`admin: ${problem}\n`);
  process.stderr.write(`${USAGE}\n`);
  process.exit(2);
}

function fail(message: string): never {
  process.stderr.write(`admin: ${message}\n`);
  process.exit(2);
}

async function operatorToken(config: Config): Promise<string> {
  if (config.operatorToken) return config.operatorToken;
  const file = path.resolve(config.dataDir, OPERATOR_TOKEN_FILE);
  try {
    return (await readFile(file, "utf8")).trim();
  } catch {
    fail(`no operator token: set COWRIE_OPERATOR_TOKEN, or COWRIE_DATA_DIR to the Edge's data folder (no ${file})`);
  }
}

function time(value: Timestamp | undefined): string {
  return value ? timestampDate(value).toISOString() : "-";
}

function keyLine(key: ApiKey): string {
  const state = key.revokedAt ? `revoked ${time(key.revokedAt)}` : "active";
  const label = key.label ? `  "${key.label}"` : "";
  return `${key.id}  ${ApiKeyScope[key.scope]}  ${state}  ${key.rateLimitPerSecond}/s burst ${key.rateLimitBurst}  created ${time(key.createdAt)}${label}`;
}

function tenantLine(tenant: Tenant): string {
  return `${tenant.id}  ${tenant.live ? "live" : "sandbox"}  created ${time(tenant.createdAt)}  "${tenant.name}"`;
}

function secretLines(secret: string): string[] {
  return [`api key secret (shown once; store it now, Cowrie keeps only a hash):`, `  ${secret}`];
}

/** `--name value` options after the positional arguments. */
function options(args: string[], known: Record<string, "flag" | "value">): Record<string, string | true> {
  const out: Record<string, string | true> = {};
  for (let index = 0; index < args.length; index++) {
    const arg = args[index] as string;
    const kind = known[arg];
    if (!kind) usage(`unknown option ${arg}`);
    if (kind === "flag") {
      out[arg] = true;
    } else {
      const value = args[++index];
      if (value === undefined) usage(`${arg} needs a value`);
      out[arg] = value;
    }
  }
  return out;
}

function count(value: string | true | undefined, name: string): number {
  if (value === undefined) return 0;
  if (value === true || !/^\d+$/.test(value)) usage(`${name} must be a whole number`);
  return Number(value);
}

async function main(): Promise<void> {
  const [command, ...args] = process.argv.slice(2);
  if (!command || command === "help" || command === "--help") usage();
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) fail(`configuration error: ${error.message}`);
    throw error;
  }
  const baseUrl = config.edgeUrl ?? `http://127.0.0.1:${config.edgePort}`;
  const token = await operatorToken(config);
  const admin = createClient(AdminService, createConnectTransport({
    baseUrl,
    httpVersion: "1.1",
    interceptors: [(next) => (request) => {
      request.header.set("authorization", `Bearer ${token}`);
      return next(request);
    }],
  }));
  const call = { timeoutMs: 10_000 };
  const lines: string[] = [];

  switch (command) {
    case "create-tenant": {
      const live = args.includes("--live");
      const name = args.filter((arg) => arg !== "--live").join(" ").trim();
      if (!name) usage("create-tenant needs a name");
      const created = await admin.createTenant({ name, live }, call);
      if (created.tenant) lines.push(`tenant   ${tenantLine(created.tenant)}`);
      if (created.apiKey) lines.push(`api key  ${keyLine(created.apiKey)}`);
      lines.push(...secretLines(created.apiKeySecret));
      break;
    }
    case "create-key": {
      const [tenantId, ...rest] = args;
      if (!tenantId || tenantId.startsWith("--")) usage("create-key needs a tenant id");
      const opts = options(rest, { "--read-only": "flag", "--label": "value", "--rate": "value", "--burst": "value" });
      const created = await admin.createApiKey({
        tenantId,
        scope: opts["--read-only"] ? ApiKeyScope.READ_ONLY : ApiKeyScope.READ_WRITE,
        label: typeof opts["--label"] === "string" ? opts["--label"] : "",
        rateLimitPerSecond: count(opts["--rate"], "--rate"),
        rateLimitBurst: count(opts["--burst"], "--burst"),
      }, call);
      if (created.apiKey) lines.push(`api key  ${keyLine(created.apiKey)}`);
      lines.push(...secretLines(created.apiKeySecret));
      break;
    }
    case "revoke-key": {
      const [keyId, ...rest] = args;
      if (!keyId || rest.length > 0) usage("revoke-key needs exactly one key id");
      const revoked = await admin.revokeApiKey({ apiKeyId: keyId }, call);
      if (revoked.apiKey) lines.push(`revoked  ${keyLine(revoked.apiKey)}`);
      break;
    }
    case "list-keys": {
      const [tenantId, ...rest] = args;
      if (!tenantId || rest.length > 0) usage("list-keys needs exactly one tenant id");
      const { apiKeys } = await admin.listApiKeys({ tenantId }, call);
      lines.push(...apiKeys.map(keyLine));
      if (apiKeys.length === 0) lines.push("(no keys)");
      break;
    }
    case "list-tenants": {
      if (args.length > 0) usage("list-tenants takes no arguments");
      let pageToken = "";
      do {
        const page = await admin.listTenants({ pageSize: 100, pageToken }, call);
        lines.push(...page.tenants.map(tenantLine));
        pageToken = page.nextPageToken;
      } while (pageToken);
      if (lines.length === 0) lines.push("(no tenants)");
      break;
    }
    default:
      usage(`unknown command ${command}`);
  }
  process.stdout.write(`${lines.join("\n")}\n`);
}

main().catch((error: unknown) => {
  const message = error instanceof ConnectError
    ? `${codeToString(error.code).toUpperCase()}: ${error.rawMessage}`
    : error instanceof Error ? error.message : String(error);
  process.stderr.write(`admin: ${message}\n`);
  process.exit(1);
});
