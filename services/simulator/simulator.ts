// The payment gateway simulator: Paystack, Flutterwave and Stripe on one HTTP/1.1 port, under
// /paystack, /flutterwave and /stripe, plus a JSON control API under /_sim for tests and
// benchmarks to script outages. Each gateway checks its own Authorization header; every API call
// passes the gateway's outage, latency, rate-limit and error settings before its contract sees it.
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { gatewayConfig, loadConfig } from "../runtime/config.js";
import { errorText, type Logger } from "../runtime/log.js";
import {
  SIMULATED_GATEWAYS,
  SettingsError,
  SimulatorCore,
  type ImportedRecord,
  type SettingsPatch,
  type SimulatedGateway,
  type SimulatedOperation,
  type SimulatedRecord,
} from "./core.js";
import { flutterwaveContract } from "./flutterwave.js";
import { paystackContract } from "./paystack.js";
import { stripeContract } from "./stripe.js";
import type { GatewayContract, WireReply } from "./wire.js";

export interface GatewaySecrets {
  /** Expected in each call's Authorization: Bearer header (Paystack also signs webhooks with it). */
  readonly secretKey: string;
  /** Flutterwave's verif-hash, Stripe's whsec_ signing secret; Paystack uses secretKey. */
  readonly webhookSecret: string;
}

export interface SimulatorOptions {
  /** Default 127.0.0.1. */
  readonly host?: string;
  /** Default 0: an ephemeral port. */
  readonly port?: number;
  /** Default: the test secrets Cowrie's configuration defaults to, so connectors work unchanged. */
  readonly secrets?: Partial<Record<SimulatedGateway, GatewaySecrets>>;
  /** Where each gateway POSTs its signed webhooks (also settable at run time: webhookUrl). */
  readonly webhookUrls?: Partial<Record<SimulatedGateway, string>>;
  /** Starting settings per gateway; POST /_sim/reset returns to these. */
  readonly settings?: Partial<Record<SimulatedGateway, SettingsPatch>>;
  /** Seeds the PRNG behind latency and rates, for repeatable runs. */
  readonly seed?: number;
  readonly log?: Logger;
}

export interface RunningSimulator {
  /** http://host:port, without a trailing slash; a gateway's base URL is `${url}/paystack`. */
  readonly url: string;
  readonly port: number;
  /** Stops listening, drops held responses and in-flight webhooks. */
  close(): Promise<void>;
}

/** The JSON view of a record in GET /_sim/records. */
export interface RecordView {
  readonly gateway: SimulatedGateway;
  readonly operation: SimulatedOperation;
  readonly reference: string;
  readonly gatewayId: string;
  /** Minor units, as a decimal string. */
  readonly amountMinor: string;
  readonly currency: string;
  readonly status: "succeeded" | "failed" | "pending";
  readonly declineCode: string | null;
  readonly createdAt: string;
  /** Refunds: the reference of the refunded charge. */
  readonly parentReference: string | null;
}

const BODY_BYTES_MAX = 1_048_576;
const WEBHOOK_TIMEOUT_MS = 5_000;

export async function startSimulator(options: SimulatorOptions = {}): Promise<RunningSimulator> {
  const log = options.log ?? pino({ level: "silent" });
  const defaults = loadConfig({});
  const secret = (gateway: SimulatedGateway): GatewaySecrets => options.secrets?.[gateway] ?? gatewayConfig(defaults, gateway);
  const startSettings: Partial<Record<SimulatedGateway, SettingsPatch>> = {};
  for (const gateway of SIMULATED_GATEWAYS) {
    const url = options.webhookUrls?.[gateway];
    startSettings[gateway] = { ...options.settings?.[gateway], ...(url ? { webhookUrl: url } : {}) };
  }
  const core = new SimulatorCore(startSettings, options.seed);
  const contracts = new Map<string, GatewayContract>([
    ["paystack", paystackContract(core, secret("paystack").secretKey)],
    ["flutterwave", flutterwaveContract(core, secret("flutterwave").secretKey, secret("flutterwave").webhookSecret)],
    ["stripe", stripeContract(core, secret("stripe").secretKey, secret("stripe").webhookSecret)],
  ]);
  const closing = new AbortController();
  const held = new Set<http.ServerResponse>();

  core.onFinal = (record) => {
    const url = core.settings(record.gateway).webhookUrl;
    const hook = url ? contracts.get(record.gateway)?.webhook(record, Date.now()) : undefined;
    if (!url || !hook) return;
    // Best effort, as the gateways' own first attempt: a failure is logged and dropped.
    fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", ...hook.headers },
      body: hook.body,
      signal: AbortSignal.any([closing.signal, AbortSignal.timeout(WEBHOOK_TIMEOUT_MS)]),
    })
      .then(async (response) => {
        await response.arrayBuffer();
        if (!response.ok) log.warn({ gateway: record.gateway, url, status: response.status }, "webhook refused; dropped");
      })
      .catch((error: unknown) => log.warn({ gateway: record.gateway, url, err: errorText(error) }, "webhook not delivered; dropped"));
  };

  /** Never answers; the socket is destroyed after holdMs, or when the simulator closes. */
  function hold(response: http.ServerResponse, holdMs: number): void {
    held.add(response);
    const timer = setTimeout(() => response.destroy(), holdMs);
    response.on("close", () => {
      clearTimeout(timer);
      held.delete(response);
    });
  }

  async function gatewayCall(contract: GatewayContract, request: http.IncomingMessage, url: URL, rawBody: string, response: http.ServerResponse) {
    const settings = core.settings(contract.name);
    const gate = core.gate(contract.name);
    if (gate === "hang") return hold(response, settings.ambiguousHoldMs);
    // Every answer takes the network's time, a down gateway's too.
    await sleep(core.latencyMs(contract.name), undefined, { signal: closing.signal });
    if (gate === "unavailable") {
      // What a load balancer in front of a down gateway answers: not the gateway's JSON.
      response.writeHead(503, { "content-type": "text/html" }).end("<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>");
      return;
    }
    const headers = flatHeaders(request.headers);
    let reply: WireReply;
    if (!contract.authorized(headers)) reply = contract.error(401, "Invalid key");
    else if (gate === "rate_limited") {
      const limited = contract.error(429, "Too many requests; slow down");
      reply = { ...limited, headers: { "retry-after": String(settings.retryAfterSeconds) } };
    } else if (gate === "server_error") reply = contract.error(500, "An unexpected error occurred");
    else {
      const path = url.pathname.slice(contract.name.length + 1) || "/";
      reply = contract.handle({ method: request.method ?? "GET", path, query: url.searchParams, headers, rawBody });
    }
    if (reply.withhold) return hold(response, settings.ambiguousHoldMs);
    send(response, reply.status, reply.body, reply.headers);
  }

  function control(method: string, url: URL, rawBody: string, response: http.ServerResponse): void {
    const settingsMatch = /^\/_sim\/gateways\/([^/]+)$/.exec(url.pathname);
    if (method === "GET" && url.pathname === "/_sim/gateways") {
      return send(response, 200, Object.fromEntries(SIMULATED_GATEWAYS.map((gateway) => [gateway, core.settings(gateway)])));
    }
    if (method === "PUT" && settingsMatch) {
      const gateway = settingsMatch[1] as SimulatedGateway;
      if (!SIMULATED_GATEWAYS.includes(gateway)) return send(response, 404, { error: `no gateway '${gateway}'`, field: "gateway" });
      let patch: unknown;
      try {
        patch = JSON.parse(rawBody);
      } catch {
        return send(response, 400, { error: "body: must be JSON", field: "body" });
      }
      try {
        return send(response, 200, core.configure(gateway, patch));
      } catch (error) {
        if (error instanceof SettingsError) return send(response, 400, { error: error.message, field: error.field });
        throw error;
      }
    }
    if (method === "POST" && url.pathname === "/_sim/reset") {
      core.reset();
      for (const contract of contracts.values()) contract.reset?.();
      return send(response, 200, { reset: true });
    }
    if (method === "POST" && url.pathname === "/_sim/records") {
      let imported: ImportedRecord[];
      try {
        imported = importedRecords(rawBody);
        core.import(imported, (gateway, operation) => (contracts.get(gateway) as GatewayContract).gatewayIdFor(operation));
      } catch (error) {
        if (error instanceof SettingsError) return send(response, 400, { error: error.message, field: error.field });
        throw error;
      }
      return send(response, 200, { imported: imported.length });
    }
    if (method === "GET" && url.pathname === "/_sim/records") {
      const gateway = url.searchParams.get("gateway") ?? undefined;
      const operation = url.searchParams.get("operation") ?? undefined;
      if (gateway !== undefined && !SIMULATED_GATEWAYS.includes(gateway as SimulatedGateway)) {
        return send(response, 400, { error: `gateway: must be one of ${SIMULATED_GATEWAYS.join(", ")}`, field: "gateway" });
      }
      if (operation !== undefined && !["charge", "payout", "refund"].includes(operation)) {
        return send(response, 400, { error: "operation: must be one of charge, payout, refund", field: "operation" });
      }
      const records = core.list({
        gateway: gateway as SimulatedGateway | undefined,
        operation: operation as SimulatedOperation | undefined,
        reference: url.searchParams.get("reference") ?? undefined,
      });
      return send(response, 200, { records: records.map(view) });
    }
    send(response, 404, { error: `no control route ${method} ${url.pathname}` });
  }

  const server = http.createServer((request, response) => {
    const url = new URL(request.url ?? "/", "http://simulator");
    readBody(request)
      .then(async (rawBody) => {
        if (rawBody === undefined) return send(response, 413, { error: `body over ${BODY_BYTES_MAX} bytes` });
        if (url.pathname.startsWith("/_sim/")) return control(request.method ?? "GET", url, rawBody, response);
        const contract = contracts.get(url.pathname.split("/")[1] ?? "");
        if (!contract) return send(response, 404, { error: `no gateway at ${url.pathname}; try /paystack, /flutterwave, /stripe or /_sim` });
        await gatewayCall(contract, request, url, rawBody, response);
      })
      .catch((error: unknown) => {
        if (closing.signal.aborted) return void response.destroy();
        log.error({ err: errorText(error), path: url.pathname }, "simulator request failed");
        if (!response.headersSent) send(response, 500, { error: errorText(error) });
      });
  });

  const host = options.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
    port,
    async close() {
      closing.abort();
      for (const response of held) response.destroy();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
  };
}

function view(record: SimulatedRecord): RecordView {
  return {
    gateway: record.gateway,
    operation: record.operation,
    reference: record.reference,
    gatewayId: record.gatewayId,
    amountMinor: record.amountMinor.toString(),
    currency: record.currency,
    status: record.status,
    declineCode: record.declineCode ?? null,
    createdAt: record.createdAt.toISOString(),
    parentReference: record.parent?.reference ?? null,
  };
}

/** Records one import may carry: a body stays well under BODY_BYTES_MAX. */
const IMPORT_MAX = 5_000;

/** The body of POST /_sim/records: {records: [{gateway, operation, reference, amountMinor, currency, status, parentReference?}]}. */
function importedRecords(rawBody: string): ImportedRecord[] {
  let body: unknown;
  try {
    body = JSON.parse(rawBody);
  } catch {
    throw new SettingsError("body", "must be JSON");
  }
  const items = (body as { records?: unknown } | null)?.records;
  if (!Array.isArray(items) || items.length > IMPORT_MAX) throw new SettingsError("records", `must be an array of at most ${IMPORT_MAX} records`);
  return items.map((item: Record<string, unknown>, index) => {
    const field = (name: string) => `records[${index}].${name}`;
    if (!SIMULATED_GATEWAYS.includes(item.gateway as SimulatedGateway)) throw new SettingsError(field("gateway"), `must be one of ${SIMULATED_GATEWAYS.join(", ")}`);
    if (!["charge", "payout", "refund"].includes(item.operation as string)) throw new SettingsError(field("operation"), "must be one of charge, payout, refund");
    if (typeof item.reference !== "string" || item.reference === "") throw new SettingsError(field("reference"), "must be a non-empty string");
    if (typeof item.amountMinor !== "string" || !/^[1-9]\d{0,17}$/.test(item.amountMinor)) throw new SettingsError(field("amountMinor"), "must be a positive integer as a decimal string");
    if (typeof item.currency !== "string" || !/^[A-Z]{3}$/.test(item.currency)) throw new SettingsError(field("currency"), "must be an ISO 4217 code");
    if (!["succeeded", "failed", "pending"].includes(item.status as string)) throw new SettingsError(field("status"), "must be one of succeeded, failed, pending");
    if (item.parentReference !== undefined && typeof item.parentReference !== "string") throw new SettingsError(field("parentReference"), "must be a string");
    if (item.operation === "refund" && item.parentReference === undefined) throw new SettingsError(field("parentReference"), "is required for a refund");
    const reference = item.reference;
    return {
      gateway: item.gateway as SimulatedGateway,
      operation: item.operation as SimulatedOperation,
      reference,
      amountMinor: BigInt(item.amountMinor),
      currency: item.currency,
      status: item.status as ImportedRecord["status"],
      ...(typeof item.parentReference === "string" ? { parentReference: item.parentReference } : {}),
      // What each contract reads back: Stripe's metadata, and a refund's note where Cowrie keeps its reference.
      details: { "metadata.cowrie_reference": reference, merchant_note: reference, comments: reference },
    };
  });
}

function send(response: http.ServerResponse, status: number, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
  if (response.destroyed) return;
  response.writeHead(status, { "content-type": "application/json", ...headers }).end(JSON.stringify(body));
}

function flatHeaders(headers: http.IncomingHttpHeaders): Record<string, string | undefined> {
  return Object.fromEntries(Object.entries(headers).map(([name, value]) => [name, Array.isArray(value) ? value.join(", ") : value]));
}

/** The whole body as text, or undefined past BODY_BYTES_MAX. */
async function readBody(request: http.IncomingMessage): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    if (bytes > BODY_BYTES_MAX) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}
