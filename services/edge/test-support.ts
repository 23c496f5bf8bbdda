// Helpers for the Edge's own tests: clients that carry an API key or the operator token, an
// Edge started alone in front of stand-in internal services, and a fingerprint of every row in
// the mesh's schemas to prove that a refused request changed nothing.
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport } from "@connectrpc/connect-node";
import postgres from "postgres";
import { AdminService } from "../../gen/cowrie/edge/v1/admin_pb.js";
import { startMesh } from "../mesh.js";
import { capturingLogger, freshDatabase, meshEnvironment, startTestService, testConfig, TEST_REDIS_URL } from "../runtime/testing.js";
import * as http from "node:http";
import { edgeModule } from "./service.js";

/** Sets `Authorization: Bearer <token>` on every call. */
export function bearer(token: string): Interceptor {
  return (next) => (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
}

export function edgeClient<T extends DescService>(service: T, baseUrl: string, token?: string): Client<T> {
  return createClient(service, createConnectTransport({ baseUrl, httpVersion: "2", interceptors: token ? [bearer(token)] : [] }));
}

/** A Connect server on a free port serving stand-ins for internal services. */
export async function startStub(routes: (router: ConnectRouter) => void): Promise<{ baseUrl: string; close(): Promise<void> }> {
  const server = http2.createServer(connectNodeAdapter({ routes }));
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      for (const session of sessions) session.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export const OPERATOR_TOKEN = "operator-token-for-edge-tests";

/** The Edge alone on a database, talking to `downstreamUrl` for both the Wallet and the Router. */
export async function startEdgeAlone(databaseUrl: string, downstreamUrl: string, env: Record<string, string> = {}) {
  const edge = await startTestService(edgeModule, {
    DATABASE_URL: databaseUrl,
    REDIS_URL: TEST_REDIS_URL,
    COWRIE_OPERATOR_TOKEN: OPERATOR_TOKEN,
    COWRIE_WALLET_URL: downstreamUrl,
    COWRIE_ROUTER_URL: downstreamUrl,
    COWRIE_LOG_LEVEL: "warn",
    ...env,
  });
  const admin = edgeClient(AdminService, edge.baseUrl, OPERATOR_TOKEN);
  return { ...edge, admin };
}

/** A new tenant and its first (read-write) key. */
export async function newTenant(admin: Client<typeof AdminService>, name = "tenant") {
  const created = await admin.createTenant({ name });
  return { tenantId: created.tenant?.id ?? "", keyId: created.apiKey?.id ?? "", apiKey: created.apiKeySecret };
}

/**
 * One entry per table of the given schemas: its row count and an md5 over all its rows, so that
 * inserts, updates and deletes all show up in a before/after comparison. An outbox is compared by
 * its event ids: the relay stamps published_at in the background, which writes no new fact; the
 * Ledger relay's cursor is left out for the same reason (the journal it follows is compared).
 * The tables event consumers fill are left out: they catch up on earlier events in the background,
 * and a request that wrongly wrote something would show in the outbox it came from.
 */
const BACKGROUND_TABLES = new Set(["inbox", "parked_events", "audit_events", "webhook_deliveries", "webhook_attempts", "relay_cursor"]);

export async function snapshotRows(sql: postgres.Sql, schemas: string[]): Promise<Record<string, string>> {
  const tables = await sql<{ schema: string; name: string }[]>`
    select table_schema as schema, table_name as name from information_schema.tables
    where table_schema in ${sql(schemas)} and table_type = 'BASE TABLE' order by 1, 2`;
  const out: Record<string, string> = {};
  for (const { schema, name } of tables.filter((table) => !BACKGROUND_TABLES.has(table.name))) {
    const rows = name === "outbox" ? "t.id::text" : "t::text";
    const [row] = await sql.unsafe(
      `select count(*)::text as n, coalesce(md5(string_agg(${rows}, '|' order by ${rows})), '') as h from "${schema}"."${name}" t`,
    );
    out[`${schema}.${name}`] = `${row?.n} ${row?.h}`;
  }
  return out;
}

/**
 * Runs `body` while PostgreSQL refuses the first `write` to `edge.<table>` whose new row matches
 * `condition` (SQL over `new`), as when the database restarts just then. A sequence counts the
 * matching writes, since a refused transaction keeps nothing; `refusedFirst` says whether the
 * refusal happened.
 */
export async function refusingFirstWrite<T>(
  sql: postgres.Sql,
  write: "insert" | "update",
  table: string,
  condition: string,
  body: () => Promise<T>,
): Promise<{ result: T; refusedFirst: boolean }> {
  const name = `edge.refuse_${table}_${process.pid}`;
  await sql.unsafe(`create sequence ${name}`);
  await sql.unsafe(`
    create function ${name}() returns trigger language plpgsql as $$
    begin
      if (${condition}) and nextval('${name}') = 1 then
        raise exception 'the database is restarting (test)';
      end if;
      return new;
    end $$`);
  await sql.unsafe(`create trigger refuse_${table}_${process.pid} before ${write} on edge.${table} for each row execute function ${name}()`);
  try {
    const result = await body();
    const [counted] = await sql.unsafe(`select is_called from ${name}`);
    return { result, refusedFirst: Boolean(counted?.is_called) };
  } finally {
    await sql.unsafe(`drop trigger refuse_${table}_${process.pid} on edge.${table}`);
    await sql.unsafe(`drop function ${name}()`);
    await sql.unsafe(`drop sequence ${name}`);
  }
}

/** Rows of edge.idempotency_keys, read directly. */
export async function idempotencyRows(databaseUrl: string): Promise<{ tenant_id: string; key: string; state: number; attempts: number; method: string }[]> {
  const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} });
  try {
    return await sql`select tenant_id, key, state, attempts, method from edge.idempotency_keys order by created_at`;
  } finally {
    await sql.end();
  }
}

/** The whole mesh in this process (Ledger, Wallet, Router, Edge) on a fresh database and the real Redis. */
export async function startEdgeMesh(label: string, env: Record<string, string> = {}) {
  const database = await freshDatabase(label);
  const config = testConfig(await meshEnvironment({
    DATABASE_URL: database.url,
    REDIS_URL: TEST_REDIS_URL,
    COWRIE_LOG_LEVEL: "warn",
    COWRIE_OPERATOR_TOKEN: OPERATOR_TOKEN,
    ...env,
  }));
  const mesh = await startMesh(config, ["ledger", "wallet", "router", "edge"], capturingLogger().log).catch(async (error: unknown) => {
    await database.drop();
    throw error;
  });
  const edgePort = mesh.services.find((service) => service.name === "edge")?.port;
  const baseUrl = `http://127.0.0.1:${edgePort}`;
  return {
    databaseUrl: database.url,
    baseUrl,
    admin: edgeClient(AdminService, baseUrl, OPERATOR_TOKEN),
    async close() {
      await mesh.close();
      await database.drop();
    },
  };
}

export interface WebhookRequest {
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export interface WebhookReceiver {
  url: string;
  requests: WebhookRequest[];
  /** The status to answer the n-th request (1-based) with; may wait first. */
  answer: (n: number) => number | Promise<number>;
  close(): Promise<void>;
}

/** A merchant's webhook endpoint on a free port: records every request and answers as `answer` says. */
export async function startWebhookReceiver(answer: WebhookReceiver["answer"] = () => 200): Promise<WebhookReceiver> {
  const requests: WebhookRequest[] = [];
  const state: WebhookReceiver = { url: "", requests, answer, close: async () => {} };
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      requests.push({ headers: request.headers, body: Buffer.concat(chunks) });
      void Promise.resolve(state.answer(requests.length)).then((status) => {
        if (status >= 300 && status < 400) response.setHeader("location", "https://elsewhere.example/hook");
        response.writeHead(status).end("answer body");
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/cowrie`;
  state.close = async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  };
  return state;
}
