// One port per service serving gRPC (HTTP/2 cleartext), gRPC-Web and Connect (HTTP/1.1 and
// HTTP/2), plus reflection, health and /metrics. Node's cleartext HTTP/2 server refuses
// HTTP/1.1, so a plain TCP listener reads the first bytes of each connection and hands it to the
// HTTP/2 server when they are the HTTP/2 preface ("PRI * HTTP/2.0"), else to the HTTP/1.1 server.
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import { randomUUID } from "node:crypto";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, cors, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { runInCallContext, serverBudgetMs } from "./call-context.js";
import type { Config } from "./config.js";
import { toConnectError } from "./errors.js";
import { HealthState, registerHealth } from "./health.js";
import { sampledLog, type Logger } from "./log.js";
import { metrics } from "./metrics.js";
import { pause } from "./pause.js";
import { reflectedServices, registerReflection } from "./reflection.js";

export const REQUEST_ID_HEADER = "x-request-id";
const HTTP2_PREFACE_START = Buffer.from("PRI");
const EXTRA_CORS_HEADERS = [REQUEST_ID_HEADER, "idempotency-key", "authorization"];
/** Response headers a browser client may read: the request id, replay marker and rate-limit hint. */
const EXPOSED_HEADERS = [REQUEST_ID_HEADER, "idempotent-replayed", "retry-after"];

export interface ServerOptions {
  /** Short service name, used in logs and metric labels ("ledger"). */
  name: string;
  host: string;
  port: number;
  config: Config;
  log: Logger;
  /** The Protobuf services this port implements (reflection and health are added). */
  services: DescService[];
  routes: (router: ConnectRouter) => void;
  health: HealthState;
  /** Plain HTTP endpoints beside the RPCs (gateway webhooks); true when it took the request. */
  http?: (request: AnyRequest, response: AnyResponse) => boolean;
}

export interface RunningServer {
  readonly port: number;
  /** Stops accepting, lets in-flight calls finish within the grace period, then closes. */
  close(): Promise<void>;
}

/** Reads the client's timeout from the gRPC or Connect header, in milliseconds. */
export function clientTimeoutMs(header: Headers): number | undefined {
  const grpc = header.get("grpc-timeout");
  if (grpc) {
    const match = /^(\d{1,8})([HMSmun])$/.exec(grpc);
    if (!match) return undefined;
    const unitMs = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 }[match[2] as "H"];
    return Number(match[1]) * unitMs;
  }
  const connect = header.get("connect-timeout-ms");
  if (connect && /^\d{1,10}$/.test(connect)) return Number(connect);
  return undefined;
}

/**
 * Wraps every RPC: assigns the request id and the deadline, runs the handler inside that call
 * context, cuts it off at the deadline, maps stray errors to deliberate codes, and writes the
 * one log line and the metrics of the call.
 */
function callInterceptor(name: string, config: Config, log: Logger, inFlight: Set<AbortController>): Interceptor {
  const { rpcRequests, rpcDurationSeconds } = metrics();
  // UNAVAILABLE repeats on every call while a dependency is away (a breaker open fails hundreds a
  // second): one line a second per method, with a count; every call still has its "rpc" line.
  const unavailableLog = sampledLog();
  return (next) => async (request) => {
    const startedAtMs = Date.now();
    // The handling time from the monotonic clock: Date.now() counts whole milliseconds, too coarse
    // for budgets of a few.
    const startedAt = performance.now();
    const requestId = request.header.get(REQUEST_ID_HEADER) || randomUUID();
    const budgetMs = serverBudgetMs(clientTimeoutMs(request.header), config);
    const controller = new AbortController();
    const onCallerGone = (): void => controller.abort(request.signal.reason);
    request.signal.addEventListener("abort", onCallerGone, { once: true });
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const error = new ConnectError(`deadline of ${budgetMs} ms exceeded`, Code.DeadlineExceeded);
        controller.abort(error);
        reject(error);
      }, budgetMs);
    });
    const method = request.method.name;
    let code = "ok";
    if (!request.stream) inFlight.add(controller);
    try {
      const context = { requestId, deadlineAtMs: startedAtMs + budgetMs, receivedAtMs: startedAtMs, signal: controller.signal };
      const work = runInCallContext(context, () => next(request));
      // Streams (health Watch, reflection) live longer than any deadline: only unary calls race it.
      const response = request.stream ? await work : await Promise.race([work, deadline]);
      response.header.set(REQUEST_ID_HEADER, requestId);
      return response;
    } catch (error) {
      const mapped = toConnectError(error);
      code = codeToString(mapped.code);
      if (mapped.code === Code.Internal) log.error({ err: error, requestId, method }, "rpc failed");
      if (mapped.code === Code.Unavailable) {
        unavailableLog(method, (notLogged) => log.error({ err: error, requestId, method, notLogged }, "rpc failed"));
      }
      mapped.metadata.set(REQUEST_ID_HEADER, requestId);
      throw mapped;
    } finally {
      clearTimeout(timer);
      request.signal.removeEventListener("abort", onCallerGone);
      inFlight.delete(controller);
      const durationMs = Math.round((performance.now() - startedAt) * 100) / 100;
      const labels = { service: name, method, code };
      rpcRequests.inc(labels);
      rpcDurationSeconds.observe(labels, durationMs / 1000);
      log.info({ rpc: `${request.service.typeName}/${method}`, code, durationMs, budgetMs, requestId }, "rpc");
    }
  };
}

function allowedOrigin(config: Config, origin: string | undefined): string | undefined {
  if (!origin) return undefined;
  if (config.corsOrigins === "*") return origin;
  return config.corsOrigins.split(",").map((entry) => entry.trim()).includes(origin) ? origin : undefined;
}

export type AnyRequest = http.IncomingMessage | http2.Http2ServerRequest;
export type AnyResponse = http.ServerResponse | http2.Http2ServerResponse;

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const { name, config, log, health } = options;
  // The unary calls in flight, each by its own abort controller: close() waits for them, then
  // aborts those still running. Not connect-node's shutdownSignal: that links every call to one
  // shared AbortSignal, and adding or removing a listener walks all of them (O(n) each), which
  // cost the Edge 8% of its CPU with 3,000 calls in flight during a spike.
  const inFlight = new Set<AbortController>();
  const rpcHandler = connectNodeAdapter({
    routes: (router) => {
      options.routes(router);
      registerHealth(router, health);
      registerReflection(router, options.services);
    },
    interceptors: [callInterceptor(name, config, log, inFlight)],
  });

  const handle = (request: AnyRequest, response: AnyResponse): void => {
    const origin = allowedOrigin(config, request.headers.origin);
    if (origin) {
      response.setHeader("access-control-allow-origin", origin);
      response.setHeader("vary", "origin");
      response.setHeader("access-control-expose-headers", [...cors.exposedHeaders, ...EXPOSED_HEADERS].join(", "));
    }
    if (request.method === "OPTIONS" && origin) {
      response.writeHead(204, {
        "access-control-allow-methods": cors.allowedMethods.join(", "),
        "access-control-allow-headers": [...cors.allowedHeaders, ...EXTRA_CORS_HEADERS].join(", "),
        "access-control-max-age": "7200",
      });
      response.end();
      return;
    }
    if (request.method === "GET" && request.url === "/metrics") {
      void serveMetrics(response);
      return;
    }
    if (options.http?.(request, response)) return;
    rpcHandler(request as never, response as never);
  };

  const h1 = http.createServer(handle);
  const h2 = http2.createServer({}, handle);
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  const sockets = new Set<net.Socket>();
  const listener = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    routeConnection(socket, h1, h2);
  });

  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(options.port, options.host, () => {
      listener.off("error", reject);
      resolve();
    });
  });
  const address = listener.address() as net.AddressInfo;
  log.info({ port: address.port, services: reflectedServices(options.services).map((s) => s.typeName) }, "listening");

  return {
    port: address.port,
    async close() {
      health.shutdown();
      listener.close();
      const graceEndsAtMs = Date.now() + config.shutdownGraceMs;
      while (inFlight.size > 0 && Date.now() < graceEndsAtMs) await pause(20);
      if (inFlight.size > 0) log.warn({ inFlight: inFlight.size }, "grace period over; closing with calls in flight");
      const stopping = new ConnectError(`${name} is shutting down`, Code.Unavailable);
      for (const controller of inFlight) controller.abort(stopping);
      for (const session of sessions) session.close();
      h1.closeIdleConnections();
      await pause(50);
      for (const socket of sockets) socket.destroy();
      log.info({}, "stopped");
    },
  };
}

async function serveMetrics(response: AnyResponse): Promise<void> {
  const registry = metrics().registry;
  response.writeHead(200, { "content-type": registry.contentType });
  response.end(await registry.metrics());
}

/**
 * Waits for the first bytes of a connection, then gives it to the HTTP/2 or the HTTP/1.1 server.
 * The socket stays in paused mode and the bytes are put back with unshift: Node's HTTP/2 session
 * drains what is buffered on the socket before it reads from the handle itself.
 */
function routeConnection(socket: net.Socket, h1: http.Server, h2: http2.Http2Server): void {
  const onReadable = (): void => {
    const received = socket.read() as Buffer | null;
    if (received === null) return;
    if (received.length < HTTP2_PREFACE_START.length && !isHttp1Start(received)) {
      socket.unshift(received);
      return;
    }
    socket.off("readable", onReadable);
    socket.unshift(received);
    const isHttp2 = received.subarray(0, HTTP2_PREFACE_START.length).equals(HTTP2_PREFACE_START);
    (isHttp2 ? h2 : h1).emit("connection", socket);
  };
  socket.on("readable", onReadable);
}

function isHttp1Start(bytes: Buffer): boolean {
  // Any byte that cannot begin "PRI" settles the question before three bytes arrive.
  return bytes.length > 0 && !HTTP2_PREFACE_START.subarray(0, bytes.length).equals(bytes);
}

