// The load-generating side of `npm run bench:rpc`. bench/rpc.ts starts this file as a child
// process (pinned to the other core when taskset is available) and sends it one case at a time
// over the IPC channel; it keeps a fixed number of unary Health/Check calls in flight for a
// warm-up and then a measured window, and answers with throughput, client-side latencies, errors
// and its own CPU time. Nothing here loops without an end: every phase is bounded by the clock
// and every call by its deadline.
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { createClient, type Transport } from "@connectrpc/connect";
import { Http2SessionManager, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckResponse,
} from "../gen/grpc/health/v1/health_pb.js";
import { grpcServiceDefinition } from "../services/runtime/grpc-js.js";

/** Which client library and protocol the child uses for a case. */
export type ClientKind = "grpcjs" | "connect" | "connect-grpc";

export interface RunMessage {
  type: "run";
  id: string;
  client: ClientKind;
  port: number;
  warmupSeconds: number;
  seconds: number;
  concurrency: number;
  /** HTTP/2 connections (clients) the in-flight calls are spread over; 1 is one shared transport. */
  connections: number;
  /** Deadline carried by every call (grpc-timeout / connect-timeout-ms); 0 sends none. */
  timeoutMs: number;
}

export interface CaseResult {
  type: "result";
  id: string;
  /** Calls completed inside the measured window (successes and errors). */
  calls: number;
  ok: number;
  errors: number;
  firstError?: string;
  /** Length of the measured window in seconds, as timed by the child. */
  windowSeconds: number;
  rps: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  /** CPU time (user + system) the child spent inside the measured window, in microseconds. */
  clientCpuUs: number;
}

/** Sent to the parent when the measured window opens and closes, so it can sample its own CPU. */
export interface MarkMessage {
  type: "measure-start" | "measure-end";
  id: string;
}

export type ChildMessage = CaseResult | MarkMessage | { type: "ready" } | { type: "fatal"; message: string };

interface BenchClient {
  /** One Health/Check call; resolves with the serving status, rejects on any RPC error. */
  check(seq: number): Promise<ServingStatus>;
  close(): void;
}

const REQUEST = create(HealthCheckRequestSchema, { service: "" });

function connectClient(kind: "connect" | "connect-grpc", port: number, timeoutMs: number): BenchClient {
  const baseUrl = `http://127.0.0.1:${port}`;
  // Same HTTP/2 settings as services/runtime/client.ts sharedTarget(); the session manager is
  // ours so that the connection can be closed when the case ends.
  const sessionManager = new Http2SessionManager(baseUrl, {
    pingIntervalMs: 10_000,
    pingTimeoutMs: 5_000,
    idleConnectionTimeoutMs: 60_000,
  });
  const transport: Transport = kind === "connect"
    ? createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, sessionManager })
    : createGrpcTransport({ baseUrl, sessionManager });
  const client = createClient(Health, transport);
  return {
    async check(seq) {
      // Every internal hop carries a deadline and a request id (services/runtime/client.ts).
      const response = await client.check(REQUEST, {
        timeoutMs: timeoutMs > 0 ? timeoutMs : undefined,
        headers: { "x-request-id": `bench-${seq}` },
      });
      return response.status;
    },
    close() {
      sessionManager.abort();
    },
  };
}

function grpcjsClient(port: number, timeoutMs: number): BenchClient {
  const HealthClient = grpc.makeGenericClientConstructor(grpcServiceDefinition(Health), "Health");
  // A local subchannel pool: otherwise every grpc-js client to one target shares one connection.
  const client = new HealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
    "grpc.use_local_subchannel_pool": 1,
  });
  const check = (client as unknown as Record<string, (...args: unknown[]) => unknown>)["check"] as (
    ...args: unknown[]
  ) => unknown;
  return {
    check(seq) {
      return new Promise((resolve, reject) => {
        const metadata = new grpc.Metadata();
        metadata.set("x-request-id", `bench-${seq}`);
        const options: grpc.CallOptions = timeoutMs > 0 ? { deadline: Date.now() + timeoutMs } : {};
        check.call(client, REQUEST, metadata, options, (error: grpc.ServiceError | null, response?: HealthCheckResponse) => {
          if (error) reject(error);
          else resolve((response as HealthCheckResponse).status);
        });
      });
    },
    close() {
      client.close();
    },
  };
}

function cpuMicros(): number {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] as number;
}

function send(message: ChildMessage): void {
  process.send?.(message);
}

async function runCase(message: RunMessage): Promise<CaseResult> {
  const clients = Array.from({ length: Math.max(1, message.connections) }, () =>
    message.client === "grpcjs"
      ? grpcjsClient(message.port, message.timeoutMs)
      : connectClient(message.client, message.port, message.timeoutMs),
  );
  const startMs = performance.now();
  const measureStartMs = startMs + message.warmupSeconds * 1000;
  const measureEndMs = measureStartMs + message.seconds * 1000;
  let latencies = new Float64Array(65_536);
  let count = 0;
  let ok = 0;
  let errors = 0;
  let firstError: string | undefined;
  let seq = 0;
  let cpuAtStart = 0;
  let cpuAtEnd = 0;
  let windowStartMs = measureStartMs;
  let windowEndMs = measureEndMs;

  // The window marks fire from timers, so the parent samples its CPU at (almost) the same moments.
  const startTimer = setTimeout(() => {
    windowStartMs = performance.now();
    cpuAtStart = cpuMicros();
    send({ type: "measure-start", id: message.id });
  }, measureStartMs - performance.now());
  const endTimer = setTimeout(() => {
    windowEndMs = performance.now();
    cpuAtEnd = cpuMicros();
    send({ type: "measure-end", id: message.id });
  }, measureEndMs - performance.now());

  // BENCH_TRACE=1: completions per 500 ms on stderr, to see whether a case settles or drifts.
  let completedInSlice = 0;
  const trace: number[] = [];
  const tracer = process.env.BENCH_TRACE === "1"
    ? setInterval(() => {
        trace.push(completedInSlice * 2);
        completedInSlice = 0;
      }, 500)
    : undefined;

  const worker = async (index: number): Promise<void> => {
    const client = clients[index % clients.length] as BenchClient;
    while (performance.now() < measureEndMs) {
      const sentAt = performance.now();
      let failed = false;
      try {
        const status = await client.check(seq++);
        if (status !== ServingStatus.SERVING) throw new Error(`status ${ServingStatus[status]}`);
      } catch (error) {
        failed = true;
        if (firstError === undefined) firstError = error instanceof Error ? error.message : String(error);
      }
      const doneAt = performance.now();
      completedInSlice++;
      // A call counts when it completes inside the measured window.
      if (doneAt < measureStartMs || doneAt > measureEndMs) continue;
      if (failed) {
        errors++;
        continue;
      }
      ok++;
      if (count === latencies.length) {
        const bigger = new Float64Array(latencies.length * 2);
        bigger.set(latencies);
        latencies = bigger;
      }
      latencies[count++] = doneAt - sentAt;
    }
  };
  try {
    await Promise.all(Array.from({ length: message.concurrency }, (_, index) => worker(index)));
  } finally {
    clearTimeout(startTimer);
    clearTimeout(endTimer);
    clearInterval(tracer);
    for (const client of clients) client.close();
    if (tracer) process.stderr.write(`bench:rpc: case ${message.id} calls/s per 500 ms: ${trace.join(" ")}\n`);
  }
  if (cpuAtEnd === 0) {
    // The end timer could not fire before the workers finished (only if the loop overran).
    windowEndMs = performance.now();
    cpuAtEnd = cpuMicros();
    send({ type: "measure-end", id: message.id });
  }
  const sorted = latencies.subarray(0, count).sort();
  const windowSeconds = (windowEndMs - windowStartMs) / 1000;
  return {
    type: "result",
    id: message.id,
    calls: ok + errors,
    ok,
    errors,
    ...(firstError === undefined ? {} : { firstError }),
    windowSeconds,
    rps: ok / message.seconds,
    p50Ms: percentile(sorted, 0.5),
    p90Ms: percentile(sorted, 0.9),
    p99Ms: percentile(sorted, 0.99),
    maxMs: count > 0 ? (sorted[count - 1] as number) : 0,
    clientCpuUs: cpuAtEnd - cpuAtStart,
  };
}

function main(): void {
  if (!process.send) {
    console.error("bench/rpc-load.ts is started by bench/rpc.ts (npm run bench:rpc), not directly");
    process.exit(2);
  }
  let busy = false;
  process.on("message", (raw: unknown) => {
    const message = raw as RunMessage | { type: "exit" };
    if (message.type === "exit") {
      process.disconnect();
      return;
    }
    if (message.type !== "run" || busy) return;
    busy = true;
    runCase(message).then(
      (result) => {
        busy = false;
        send(result);
      },
      (error: unknown) => {
        send({ type: "fatal", message: error instanceof Error ? error.stack ?? error.message : String(error) });
        process.exitCode = 1;
        process.disconnect();
      },
    );
  });
  // Without a parent there is nothing to do: leave instead of lingering.
  process.on("disconnect", () => {
    const timer = setTimeout(() => process.exit(process.exitCode ?? 0), 2000);
    timer.unref();
  });
  send({ type: "ready" });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
