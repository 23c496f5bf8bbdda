// Helpers for Cowrie's own tests: real backends with isolated state, free ports, and a config
// built the same way the services build theirs. Nothing here replaces a product component.
import assert from "node:assert/strict";
import * as net from "node:net";
import { Writable } from "node:stream";
import { pino } from "pino";
import { ConnectError } from "@connectrpc/connect";
import postgres from "postgres";
import { Connection } from "rabbitmq-client";
import { loadConfig, type Config } from "./config.js";
import type { Logger } from "./log.js";
import { openBackends, startService, type RunningService, type ServiceModule } from "./service.js";

export const TEST_POSTGRES_URL = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
export const TEST_AMQP_URL = process.env.TEST_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";

/** Creates an empty database for one test file and returns its URL and a function that drops it. */
export async function freshDatabase(label: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `cowrie_test_${label}_${process.pid}_${Date.now().toString(36)}`.toLowerCase().replace(/[^a-z0-9_]/g, "_");
  const admin = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database "${name}"`);
  await admin.end();
  const url = new URL(TEST_POSTGRES_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const cleanup = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {} });
      await cleanup.unsafe(`drop database if exists "${name}" with (force)`);
      await cleanup.end();
    },
  };
}

/** Ports the OS reports free right now. */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, () =>
      new Promise<net.Server>((resolve, reject) => {
        const server = net.createServer();
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => resolve(server));
      }),
    ),
  );
  const ports = servers.map((server) => (server.address() as net.AddressInfo).port);
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
}

/** Environment for a mesh on free ports; merge backend URLs in as needed. */
export async function meshEnvironment(extra: Record<string, string> = {}): Promise<Record<string, string>> {
  const [edge, ledger, wallet, router, risk] = (await freePorts(5)) as [number, number, number, number, number];
  return {
    COWRIE_EDGE_PORT: String(edge),
    COWRIE_LEDGER_PORT: String(ledger),
    COWRIE_WALLET_PORT: String(wallet),
    COWRIE_ROUTER_PORT: String(router),
    COWRIE_RISK_PORT: String(risk),
    COWRIE_LOG_LEVEL: "warn",
    // Test meshes share one RabbitMQ: each gets its own exchanges and queues.
    COWRIE_BROKER_NAMESPACE: `test-${process.pid}-${edge}`,
    ...extra,
  };
}

export function testConfig(env: Record<string, string>): Config {
  return loadConfig({ ...env } as NodeJS.ProcessEnv);
}

/** A logger whose JSON lines are kept in memory, for asserting on what was logged. */
export function capturingLogger(): { log: Logger; lines: () => Record<string, unknown>[] } {
  const captured: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      captured.push(...String(chunk).split("\n").filter(Boolean));
      done();
    },
  });
  return { log: pino({ level: "info" }, sink), lines: () => captured.map((line) => JSON.parse(line)) };
}

/** One service started in this process on its own backends, as the runtime starts it, for a test. */
export async function startTestService(
  module: ServiceModule,
  env: Record<string, string>,
): Promise<{ service: RunningService; baseUrl: string; close(): Promise<void> }> {
  const config = testConfig(await meshEnvironment(env));
  const { log } = capturingLogger();
  const backends = await openBackends(config, log);
  // A service that fails to start must not leave its pools open and keep the test process alive.
  const service = await startService(module, backends, config, log).catch(async (error: unknown) => {
    await backends.close();
    throw error;
  });
  return {
    service,
    baseUrl: `http://127.0.0.1:${service.port}`,
    async close() {
      // The server drains before its backends go, so in-flight calls finish against a live database.
      await service.close();
      await backends.close();
    },
  };
}

/** The ConnectError a call failed with; fails the test when the call succeeded. */
export async function rejection(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (error) {
    return ConnectError.from(error);
  }
  assert.fail("expected the call to fail");
}

/**
 * Deletes queues and exchanges a test declared in RabbitMQ, with their dead-letter twins
 * ("<name>.dead", as broker.ts declares them): quorum queues outlive the test otherwise, and a
 * broker that piles them up slows down.
 */
export async function deleteBrokerTopology(topology: { queues: readonly string[]; exchanges: readonly string[] }, url = TEST_AMQP_URL): Promise<void> {
  const connection = new Connection({ url, connectionName: `cowrie-test-cleanup-${process.pid}` });
  try {
    for (const queue of topology.queues.flatMap((name) => [name, `${name}.dead`])) await connection.queueDelete({ queue });
    for (const exchange of topology.exchanges.flatMap((name) => [name, `${name}.dead`])) await connection.exchangeDelete({ exchange });
  } finally {
    await connection.close();
  }
}
