// The Ledger while its database goes away: health turns NOT_SERVING, calls fail fast with
// UNAVAILABLE (or DEADLINE_EXCEEDED when the database hangs) instead of hanging or crashing the
// process, and everything recovers by itself when the database is back.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AccountCode, CreateAccountResult, LedgerService } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { ServingStatus } from "../runtime/health.js";
import type { RunningService } from "../runtime/service.js";
import { startTcpProxy, type TcpProxy } from "../runtime/tcp-proxy.js";
import { freePorts, freshDatabase, startTestService, TEST_POSTGRES_URL } from "../runtime/testing.js";
import { ledgerModule } from "./service.js";

let database: Awaited<ReturnType<typeof freshDatabase>>;
let proxy: TcpProxy;
let started: Awaited<ReturnType<typeof startTestService>>;
let service: RunningService;
let ledger: Client<typeof LedgerService>;

async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<number> {
  const startedAtMs = Date.now();
  while (!condition()) {
    if (Date.now() - startedAtMs > timeoutMs) assert.fail(`${what} not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return Date.now() - startedAtMs;
}

function account(id: string) {
  return { accounts: [{ id, currency: "NGN", code: AccountCode.FEES }] };
}

before(async () => {
  database = await freshDatabase("outage");
  const postgres = new URL(TEST_POSTGRES_URL);
  proxy = await startTcpProxy({ host: postgres.hostname, port: Number(postgres.port || 5432) });
  const viaProxy = new URL(database.url);
  viaProxy.host = `127.0.0.1:${proxy.port}`;
  started = await startTestService(ledgerModule, { DATABASE_URL: viaProxy.toString(), COWRIE_HEALTH_INTERVAL_MS: "200" });
  service = started.service;
  ledger = createClient(LedgerService, createConnectTransport({ baseUrl: started.baseUrl, httpVersion: "2" }));
});

after(async () => {
  await started?.close();
  await proxy?.close();
  await database?.drop();
});

describe("Ledger when PostgreSQL goes away", () => {
  it("serves while the database is up", async () => {
    assert.equal(service.health.status, ServingStatus.SERVING);
    assert.equal((await ledger.createAccounts(account("before-outage"))).results[0]?.result, CreateAccountResult.CREATED);
  });

  it("reports NOT_SERVING and answers UNAVAILABLE quickly while connections are refused", async () => {
    proxy.setMode("refuse");
    proxy.cutAll();
    await until(() => service.health.status === ServingStatus.NOT_SERVING, 3000, "NOT_SERVING");
    const startedAtMs = Date.now();
    await assert.rejects(ledger.createAccounts(account("during-outage"), { timeoutMs: 8000 }), (error: ConnectError) => {
      assert.equal(error.code, Code.Unavailable, error.message);
      assert.match(error.rawMessage, /unavailable/);
      return true;
    });
    assert.ok(Date.now() - startedAtMs < 6000, "the call should fail fast, not wait out its deadline");
  });

  it("answers DEADLINE_EXCEEDED on time while the database hangs", async () => {
    proxy.setMode("blackhole");
    const startedAtMs = Date.now();
    await assert.rejects(ledger.createAccounts(account("while-hanging"), { timeoutMs: 800 }), (error: ConnectError) => error.code === Code.DeadlineExceeded);
    assert.ok(Date.now() - startedAtMs < 2000, `took ${Date.now() - startedAtMs} ms`);
  });

  it("recovers by itself when the database is back, and nothing half-done was left", async () => {
    proxy.setMode("up");
    proxy.cutAll();
    await until(() => service.health.status === ServingStatus.SERVING, 10_000, "SERVING again");
    const created = await ledger.createAccounts(account("after-outage"), { timeoutMs: 8000 });
    assert.equal(created.results[0]?.result, CreateAccountResult.CREATED);
    const { accounts } = await ledger.lookupAccounts({ ids: ["before-outage", "during-outage", "while-hanging", "after-outage"] });
    assert.deepEqual(accounts.map((found) => found.id).sort(), ["after-outage", "before-outage"]);
  });
});

describe("Ledger started while PostgreSQL cannot be reached", () => {
  const postgres = new URL(TEST_POSTGRES_URL);
  const upstream = { host: postgres.hostname, port: Number(postgres.port || 5432) };
  const via = (port: number): string => {
    const url = new URL(database.url);
    url.host = `127.0.0.1:${port}`;
    return url.toString();
  };

  it("waits for the database, retrying, then starts and serves", async () => {
    // Nothing listens on the port at first (ECONNREFUSED); the proxy to PostgreSQL opens on it a second later.
    const [port] = (await freePorts(1)) as [number];
    const startedAtMs = Date.now();
    const starting = startTestService(ledgerModule, { DATABASE_URL: via(port), COWRIE_STARTUP_WAIT_MS: "30000" });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const late = await startTcpProxy(upstream, port);
    try {
      const started = await starting;
      try {
        assert.ok(Date.now() - startedAtMs >= 1000, "it started only once the database answered");
        const client = createClient(LedgerService, createConnectTransport({ baseUrl: started.baseUrl, httpVersion: "2" }));
        assert.equal((await client.createAccounts(account("after-late-start"))).results[0]?.result, CreateAccountResult.CREATED);
      } finally {
        await started.close();
      }
    } finally {
      await late.close();
    }
  });

  it("gives up once COWRIE_STARTUP_WAIT_MS has passed, naming it", async () => {
    // A proxy that accepts and closes every connection: postgres.js's pool keeps retrying, so
    // the attempt hangs rather than fails, and the wait's end cuts it off.
    const refusing = await startTcpProxy(upstream);
    refusing.setMode("refuse");
    try {
      const startedAtMs = Date.now();
      await assert.rejects(startTestService(ledgerModule, { DATABASE_URL: via(refusing.port), COWRIE_STARTUP_WAIT_MS: "500" }), /PostgreSQL did not answer within COWRIE_STARTUP_WAIT_MS \(500 ms\)/);
      // 500 ms of waiting, then up to 5 s for the pool to close around the attempt still hanging.
      assert.ok(Date.now() - startedAtMs < 8000, `gave up after ${Date.now() - startedAtMs} ms`);
    } finally {
      await refusing.close();
    }
  });
});
