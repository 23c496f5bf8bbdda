// The shared service runtime over real sockets: one port serving gRPC, gRPC-Web and Connect,
// reflection (also through the real `buf curl`), health, /metrics, CORS, request ids and log
// lines, deadlines, error mapping and graceful shutdown. The Router contract stands in for any
// Cowrie service; its handler here is a controllable test double.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as net from "node:net";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { create, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type HandlerContext, type Transport } from "@connectrpc/connect";
import {
  Http2SessionManager,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { RiskService } from "../../gen/cowrie/risk/v1/risk_pb.js";
import {
  GetPaymentResponseSchema,
  PaymentStatus,
  RouterService,
  type GetPaymentRequest,
  type GetPaymentResponse,
} from "../../gen/cowrie/router/v1/router_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import * as reflectionV1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as reflectionV1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { currentCallContext, type CallContext } from "./call-context.js";
import { HealthState } from "./health.js";
import { REQUEST_ID_HEADER, startServer, type RunningServer } from "./server.js";
import { capturingLogger, rejection, testConfig } from "./testing.js";

const execFileAsync = promisify(execFile);
const BUF = path.resolve(import.meta.dirname, "../../node_modules/.bin/buf");
const GET_PAYMENT_PATH = `/${RouterService.typeName}/${RouterService.method.getPayment.name}`;
const CREATED_AT_MS = Date.UTC(2024, 0, 2, 3, 4, 5);

type GetPaymentHandler = (request: GetPaymentRequest, context: HandlerContext) => Promise<GetPaymentResponse>;

function paymentResponse(request: GetPaymentRequest): GetPaymentResponse {
  return create(GetPaymentResponseSchema, {
    payment: {
      id: request.paymentId,
      tenantId: request.tenantId,
      status: PaymentStatus.SUCCEEDED,
      amountMinor: 1250n,
      currency: "EUR",
      createdAt: timestampFromMs(CREATED_AT_MS),
    },
  });
}

interface TestServer {
  readonly name: string;
  readonly port: number;
  readonly baseUrl: string;
  readonly server: RunningServer;
  readonly health: HealthState;
  /** Flip to make the health service's only dependency check throw. */
  readonly dependency: { failing: boolean };
  readonly logLines: () => Record<string, unknown>[];
  /** The "rpc" log lines (one per call). */
  readonly rpcLines: () => Record<string, unknown>[];
  grpc(): Transport;
  grpcWeb(): Transport;
  connectJson(): Transport;
  connectBinaryHttp2(): Transport;
  /** Closes the HTTP/2 sessions of this server's transports, then the server (idempotent). */
  close(): Promise<void>;
}

async function startTestServer(name: string, handler: GetPaymentHandler, env: Record<string, string> = {}): Promise<TestServer> {
  const config = testConfig({ COWRIE_SHUTDOWN_GRACE_MS: "3000", ...env });
  const { log, lines } = capturingLogger();
  const dependency = { failing: false };
  const health = new HealthState(name, [RouterService.typeName], [
    {
      name: "database",
      check: async () => {
        if (dependency.failing) throw new Error("database is down");
      },
    },
  ], log);
  await health.start(60_000, 500);
  const server = await startServer({
    name,
    host: "127.0.0.1",
    port: 0,
    config,
    log,
    services: [RouterService],
    routes: (router) => router.service(RouterService, { getPayment: handler }),
    health,
  });
  const baseUrl = `http://127.0.0.1:${server.port}`;
  const sessions: Http2SessionManager[] = [];
  const session = (): Http2SessionManager => {
    const manager = new Http2SessionManager(baseUrl);
    sessions.push(manager);
    return manager;
  };
  let closed: Promise<void> | undefined;
  return {
    name,
    port: server.port,
    baseUrl,
    server,
    health,
    dependency,
    logLines: lines,
    rpcLines: () => lines().filter((line) => line.msg === "rpc"),
    grpc: () => createGrpcTransport({ baseUrl, sessionManager: session() }),
    grpcWeb: () => createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
    connectJson: () => createConnectTransport({ baseUrl, httpVersion: "1.1" }),
    connectBinaryHttp2: () =>
      createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, sessionManager: session() }),
    close() {
      closed ??= (async () => {
        for (const manager of sessions) manager.abort();
        await server.close();
      })();
      return closed;
    },
  };
}

/** Rejects when the promise takes longer than ms, so a hang fails one test instead of the file. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  const timeout = new AbortController();
  try {
    return await Promise.race([
      promise,
      sleep(ms, undefined, { signal: timeout.signal }).then(() => {
        throw new Error(`${what} did not happen within ${ms} ms`);
      }),
    ]);
  } finally {
    timeout.abort();
  }
}

async function connectionRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => resolve(error.code === "ECONNREFUSED"));
  });
}

describe("startServer()", () => {
  const SLOW_HANDLER_MS = 1500;
  const teardown = new AbortController();
  let slowCalls: CallContext[] = [];
  let target: TestServer;

  const handler: GetPaymentHandler = async (request) => {
    switch (request.paymentId) {
      case "pay_slow": {
        const context = currentCallContext();
        assert.ok(context, "the handler runs inside a call context");
        slowCalls.push(context);
        // Deliberately ignores its signal: the runtime must cut the call off on its own.
        await sleep(SLOW_HANDLER_MS, undefined, { signal: teardown.signal }).catch(() => {});
        return paymentResponse(request);
      }
      case "pay_boom":
        throw new Error("query failed: password=hunter2");
      case "pay_refused":
        throw Object.assign(new Error("connect ECONNREFUSED 10.9.9.9:5432"), { code: "ECONNREFUSED" });
      default:
        return paymentResponse(request);
    }
  };

  before(async () => {
    target = await startTestServer("router-server-test", handler);
  });

  after(async () => {
    teardown.abort();
    await target.close();
  });

  it("answers the same unary RPC over gRPC, gRPC-Web, Connect JSON (HTTP/1.1) and Connect binary (HTTP/2) on one port", async () => {
    const transports = {
      "gRPC over HTTP/2": target.grpc(),
      "gRPC-Web over HTTP/1.1": target.grpcWeb(),
      "Connect JSON over HTTP/1.1": target.connectJson(),
      "Connect binary over HTTP/2": target.connectBinaryHttp2(),
    };
    for (const [protocol, transport] of Object.entries(transports)) {
      const client = createClient(RouterService, transport);
      const response = await client.getPayment({ tenantId: "ten_1", paymentId: "pay_1" }, { timeoutMs: 5000 });
      assert.equal(response.payment?.id, "pay_1", protocol);
      assert.equal(response.payment?.tenantId, "ten_1", protocol);
      assert.equal(response.payment?.amountMinor, 1250n, protocol);
      assert.equal(response.payment?.status, PaymentStatus.SUCCEEDED, protocol);
      assert.equal(response.payment?.createdAt?.seconds, BigInt(CREATED_AT_MS / 1000), protocol);
    }
  });

  it("answers a plain fetch POST of JSON (Connect unary over HTTP/1.1)", async () => {
    const response = await fetch(`${target.baseUrl}${GET_PAYMENT_PATH}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ tenantId: "ten_1", paymentId: "pay_fetch" }),
    });
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type") ?? "", /^application\/json/);
    assert.deepEqual(await response.json(), {
      payment: {
        id: "pay_fetch",
        tenantId: "ten_1",
        status: "PAYMENT_STATUS_SUCCEEDED",
        amountMinor: "1250",
        currency: "EUR",
        createdAt: "2024-01-02T03:04:05Z",
      },
    });
  });

  it("answers UNIMPLEMENTED over gRPC for a service or method it does not serve", async () => {
    const unknownService = createClient(RiskService, target.grpc());
    const serviceError = await rejection(unknownService.evaluate({ paymentId: "pay_1" }, { timeoutMs: 5000 }));
    assert.equal(serviceError.code, Code.Unimplemented);

    const router = createClient(RouterService, target.grpc());
    const methodError = await rejection(router.createPayment({ tenantId: "ten_1" }, { timeoutMs: 5000 }));
    assert.equal(methodError.code, Code.Unimplemented);
  });

  it("answers INVALID_ARGUMENT to a malformed Connect JSON body", async () => {
    const response = await fetch(`${target.baseUrl}${GET_PAYMENT_PATH}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: '{"tenantId": "ten_1", "paymentId": ',
    });
    assert.equal(response.status, 400);
    const body = (await response.json()) as { code: string };
    assert.equal(body.code, "invalid_argument");
  });

  it("serves Prometheus metrics on GET /metrics over HTTP/1.1, per service, method and code", async () => {
    await createClient(RouterService, target.grpc()).getPayment({ tenantId: "ten_1", paymentId: "pay_m" });
    const response = await fetch(`${target.baseUrl}/metrics`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type") ?? "", /^text\/plain/);
    const text = await response.text();
    const series = text.split("\n").filter((line) => line.startsWith("cowrie_rpc_requests_total{"));
    const ours = series.find(
      (line) =>
        line.includes(`service="${target.name}"`) && line.includes('method="GetPayment"') && line.includes('code="ok"'),
    );
    assert.ok(ours, `no cowrie_rpc_requests_total series for ${target.name}/GetPayment/ok in:\n${series.join("\n")}`);
    assert.ok(Number(ours.split(" ").at(-1)) >= 1);
    assert.match(text, /^process_cpu_user_seconds_total \d/m);
  });

  it("answers a CORS preflight with 204, the origin and the allowed headers including idempotency-key", async () => {
    const origin = "https://dashboard.example.com";
    const response = await fetch(`${target.baseUrl}${GET_PAYMENT_PATH}`, {
      method: "OPTIONS",
      headers: {
        origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,idempotency-key,x-request-id",
      },
    });
    assert.equal(response.status, 204);
    assert.equal(response.headers.get("access-control-allow-origin"), origin);
    const allowed = (response.headers.get("access-control-allow-headers") ?? "").toLowerCase().split(/,\s*/);
    for (const header of ["content-type", "connect-protocol-version", "idempotency-key", "x-request-id"]) {
      assert.ok(allowed.includes(header), `${header} missing from ${allowed.join(", ")}`);
    }
    assert.ok((response.headers.get("access-control-allow-methods") ?? "").includes("POST"));
  });

  it("writes exactly one log line per RPC, with the request id it returns in x-request-id", async () => {
    const before = target.rpcLines().length;
    const returnedIds: string[] = [];
    const remember = (headers: Headers): void => {
      const id = headers.get(REQUEST_ID_HEADER);
      assert.ok(id, "every response carries x-request-id");
      returnedIds.push(id);
    };
    const grpcClient = createClient(RouterService, target.grpc());
    const connectClient = createClient(RouterService, target.connectJson());
    await grpcClient.getPayment({ tenantId: "ten_1", paymentId: "pay_a" }, { onHeader: remember });
    await connectClient.getPayment({ tenantId: "ten_1", paymentId: "pay_b" }, { onHeader: remember });
    const failure = await rejection(grpcClient.getPayment({ tenantId: "ten_1", paymentId: "pay_boom" }));
    remember(failure.metadata);
    const callerId = "req-from-the-caller-42";
    await connectClient.getPayment(
      { tenantId: "ten_1", paymentId: "pay_c" },
      { headers: { [REQUEST_ID_HEADER]: callerId }, onHeader: remember },
    );

    assert.equal(target.rpcLines().length - before, 4, "one rpc line per call");
    assert.equal(new Set(returnedIds).size, 4, "each call has its own request id");
    assert.equal(returnedIds[3], callerId, "a caller-supplied x-request-id is kept");
    const expectedCodes = ["ok", "ok", "internal", "ok"];
    returnedIds.forEach((requestId, index) => {
      const lines = target.rpcLines().filter((line) => line.requestId === requestId);
      assert.equal(lines.length, 1, `exactly one rpc line for ${requestId}`);
      const line = lines[0]!;
      assert.equal(line.rpc, `${RouterService.typeName}/GetPayment`);
      assert.equal(line.code, expectedCodes[index]);
      assert.equal(typeof line.durationMs, "number");
    });
  });

  it("cuts a handler slower than the client's deadline off with DEADLINE_EXCEEDED and aborts its signal", async () => {
    slowCalls = [];
    const client = createClient(RouterService, target.grpc());
    const startedAt = Date.now();
    const error = await rejection(client.getPayment({ tenantId: "ten_1", paymentId: "pay_slow" }, { timeoutMs: 200 }));
    const elapsedMs = Date.now() - startedAt;
    assert.equal(error.code, Code.DeadlineExceeded);
    assert.ok(elapsedMs < 700, `answered after ${elapsedMs} ms; the handler takes ${SLOW_HANDLER_MS} ms`);
    assert.equal(slowCalls.length, 1);
    const signal = slowCalls[0]!.signal;
    if (!signal.aborted) {
      await within(new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true })), 500, "abort");
    }
    assert.ok(signal.aborted);
  });

  it("enforces the deadline on the server when the client never cancels (raw Connect timeout header)", async () => {
    slowCalls = [];
    const startedAt = Date.now();
    const response = await fetch(`${target.baseUrl}${GET_PAYMENT_PATH}`, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-timeout-ms": "200" },
      body: JSON.stringify({ tenantId: "ten_1", paymentId: "pay_slow" }),
    });
    const body = (await response.json()) as { code: string };
    const elapsedMs = Date.now() - startedAt;
    assert.equal(body.code, "deadline_exceeded");
    assert.ok(elapsedMs < 700, `answered after ${elapsedMs} ms; the handler takes ${SLOW_HANDLER_MS} ms`);
    assert.equal(slowCalls.length, 1);
    const signal = slowCalls[0]!.signal;
    assert.ok(signal.aborted, "the handler's call-context signal is aborted at the deadline");
    assert.equal(ConnectError.from(signal.reason).code, Code.DeadlineExceeded);
    const line = target.rpcLines().find((entry) => entry.requestId === response.headers.get(REQUEST_ID_HEADER));
    assert.equal(line?.code, "deadline_exceeded");
    assert.equal(line?.budgetMs, 200);
  });

  it("maps a plain Error to INTERNAL without its message, and a connection error to UNAVAILABLE", async () => {
    const client = createClient(RouterService, target.grpc());
    const internal = await rejection(client.getPayment({ tenantId: "ten_1", paymentId: "pay_boom" }));
    assert.equal(internal.code, Code.Internal);
    assert.doesNotMatch(internal.rawMessage, /hunter2|query failed/);

    const unavailable = await rejection(client.getPayment({ tenantId: "ten_1", paymentId: "pay_refused" }));
    assert.equal(unavailable.code, Code.Unavailable);
    assert.doesNotMatch(unavailable.rawMessage, /10\.9\.9\.9/);

    const logged = target.logLines().filter((line) => line.msg === "rpc failed");
    assert.ok(logged.some((line) => JSON.stringify(line.err).includes("hunter2")), "the hidden message is logged");
  });

  it("logs repeated UNAVAILABLE at most once a second per method, counting the lines left out", async () => {
    const refusing = await startTestServer("router-refusing-test", async () => {
      throw Object.assign(new Error("connect ECONNREFUSED 10.9.9.9:5432"), { code: "ECONNREFUSED" });
    });
    try {
      const client = createClient(RouterService, refusing.grpc());
      const refuse = async (count: number): Promise<void> => {
        for (let i = 0; i < count; i++) assert.equal((await rejection(client.getPayment({ tenantId: "ten_1", paymentId: `pay_${i}` }))).code, Code.Unavailable);
      };
      await refuse(20);
      await sleep(1100);
      await refuse(1);
      const failed = refusing.logLines().filter((line) => line.msg === "rpc failed");
      assert.deepEqual(failed.map((line) => line.notLogged), [0, 19]);
      assert.equal(refusing.rpcLines().filter((line) => line.code === "unavailable").length, 21, "every call keeps its rpc line");
    } finally {
      await refusing.close();
    }
  });
});

describe("registerReflection()", () => {
  let target: TestServer;
  const expectedServices = [
    RouterService.typeName,
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
  ].sort();

  before(async () => {
    target = await startTestServer("router-reflection-test", async (request) => paymentResponse(request));
  });

  after(async () => {
    await target.close();
  });

  async function* requestsOf<T>(...requests: T[]): AsyncIterable<T> {
    yield* requests;
  }

  function fileNames(fileDescriptorProtos: Uint8Array[]): string[] {
    return fileDescriptorProtos.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name);
  }

  it("lists the services and returns descriptors with their dependencies over v1 (bidi stream over gRPC)", async () => {
    const client = createClient(reflectionV1.ServerReflection, target.grpc());
    const responses = [];
    for await (const response of client.serverReflectionInfo(
      requestsOf(
        create(reflectionV1.ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } }),
        create(reflectionV1.ServerReflectionRequestSchema, {
          messageRequest: { case: "fileContainingSymbol", value: RouterService.typeName },
        }),
        create(reflectionV1.ServerReflectionRequestSchema, {
          messageRequest: { case: "fileContainingSymbol", value: "cowrie.router.v1.Payment.created_at" },
        }),
        create(reflectionV1.ServerReflectionRequestSchema, {
          messageRequest: { case: "fileContainingSymbol", value: "cowrie.nope.v1.Missing" },
        }),
      ),
      { timeoutMs: 5000 },
    )) {
      responses.push(response);
    }
    assert.equal(responses.length, 4);
    const [list, service, field, missing] = responses as [
      reflectionV1.ServerReflectionResponse,
      reflectionV1.ServerReflectionResponse,
      reflectionV1.ServerReflectionResponse,
      reflectionV1.ServerReflectionResponse,
    ];

    assert.equal(list.messageResponse.case, "listServicesResponse");
    assert.deepEqual(list.messageResponse.value.service.map((entry) => entry.name).sort(), expectedServices);

    for (const answer of [service, field]) {
      assert.equal(answer.messageResponse.case, "fileDescriptorResponse");
      const names = fileNames(answer.messageResponse.value.fileDescriptorProto);
      assert.equal(names[0], "cowrie/router/v1/router.proto", "the file declaring the symbol comes first");
      assert.ok(names.includes("google/protobuf/timestamp.proto"), `dependencies missing from ${names.join(", ")}`);
    }

    assert.equal(missing.messageResponse.case, "errorResponse");
    assert.equal(missing.messageResponse.value.errorCode, Code.NotFound);
  });

  it("answers the same over v1alpha", async () => {
    const client = createClient(reflectionV1alpha.ServerReflection, target.grpc());
    const responses = [];
    for await (const response of client.serverReflectionInfo(
      requestsOf(
        create(reflectionV1alpha.ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } }),
        create(reflectionV1alpha.ServerReflectionRequestSchema, {
          messageRequest: { case: "fileContainingSymbol", value: `${RouterService.typeName}.GetPayment` },
        }),
      ),
      { timeoutMs: 5000 },
    )) {
      responses.push(response);
    }
    const [list, method] = responses as [
      reflectionV1alpha.ServerReflectionResponse,
      reflectionV1alpha.ServerReflectionResponse,
    ];
    assert.equal(list.messageResponse.case, "listServicesResponse");
    assert.deepEqual(list.messageResponse.value.service.map((entry) => entry.name).sort(), expectedServices);
    assert.equal(method.messageResponse.case, "fileDescriptorResponse");
    const names = fileNames(method.messageResponse.value.fileDescriptorProto);
    assert.deepEqual(names, ["cowrie/router/v1/router.proto", "google/protobuf/timestamp.proto"]);
  });

  it("lets the real buf curl list the services and call a method through reflection", async () => {
    const common = ["curl", "--protocol", "grpc", "--http2-prior-knowledge"];
    const listed = await execFileAsync(BUF, [...common, "--list-services", target.baseUrl], { timeout: 10_000 });
    assert.deepEqual(listed.stdout.trim().split("\n").sort(), expectedServices);

    const called = await execFileAsync(
      BUF,
      [...common, "-d", JSON.stringify({ tenantId: "ten_buf", paymentId: "pay_buf" }), `${target.baseUrl}${GET_PAYMENT_PATH}`],
      { timeout: 10_000 },
    );
    assert.deepEqual(JSON.parse(called.stdout), {
      payment: {
        id: "pay_buf",
        tenantId: "ten_buf",
        status: "PAYMENT_STATUS_SUCCEEDED",
        amountMinor: "1250",
        currency: "EUR",
        createdAt: "2024-01-02T03:04:05Z",
      },
    });
  });
});

describe("registerHealth()", () => {
  let target: TestServer;

  before(async () => {
    target = await startTestServer("router-health-test", async (request) => paymentResponse(request));
  });

  after(async () => {
    await target.close();
  });

  it("Check follows the dependency check: SERVING, NOT_SERVING while it fails, SERVING again", async () => {
    const health = createClient(Health, target.grpc());
    const check = async (service = ""): Promise<ServingStatus> => (await health.check({ service }, { timeoutMs: 5000 })).status;

    assert.equal(await check(), ServingStatus.SERVING);
    assert.equal(await check(RouterService.typeName), ServingStatus.SERVING);
    assert.equal((await rejection(check("cowrie.nope.v1.Missing"))).code, Code.NotFound);

    target.dependency.failing = true;
    await target.health.runChecks(500);
    assert.equal(await check(), ServingStatus.NOT_SERVING);
    assert.equal(await check(RouterService.typeName), ServingStatus.NOT_SERVING);
    assert.equal(target.health.failing.get("database"), "database is down");

    target.dependency.failing = false;
    await target.health.runChecks(500);
    assert.equal(await check(), ServingStatus.SERVING);
  });

  it("Watch streams every change, reports NOT_SERVING on close() and then ends", async () => {
    const health = createClient(Health, target.grpc());
    const stream = health.watch({ service: RouterService.typeName })[Symbol.asyncIterator]();
    const next = async (): Promise<ServingStatus | "ended"> => {
      const result = await within(stream.next(), 2000, "the next Watch message");
      return result.done ? "ended" : result.value.status;
    };

    assert.equal(await next(), ServingStatus.SERVING);
    target.dependency.failing = true;
    await target.health.runChecks(500);
    assert.equal(await next(), ServingStatus.NOT_SERVING);
    target.dependency.failing = false;
    await target.health.runChecks(500);
    assert.equal(await next(), ServingStatus.SERVING);

    const closing = target.server.close();
    assert.equal(await next(), ServingStatus.NOT_SERVING);
    // The stream ends when the server shuts down: normally, or with an error; it must not hang.
    const end = await within(
      next().then(
        (value) => value,
        (error: unknown) => ConnectError.from(error).code,
      ),
      2000,
      "the end of the Watch stream",
    );
    assert.ok(end === "ended" || typeof end === "number", `unexpected message after shutdown: ${String(end)}`);
    await closing;
    assert.equal(target.health.status, ServingStatus.NOT_SERVING);
  });
});

describe("RunningServer.close()", () => {
  const HANDLER_MS = 300;
  let target: TestServer;
  let started: () => void = () => {};

  before(async () => {
    target = await startTestServer("router-shutdown-test", async (request) => {
      started();
      await sleep(HANDLER_MS);
      return paymentResponse(request);
    });
  });

  after(async () => {
    await target.close();
  });

  it("lets calls in flight finish, refuses new connections, and stops answering", async () => {
    let inHandler = 0;
    const bothStarted = new Promise<void>((resolve) => {
      started = () => {
        if (++inHandler === 2) resolve();
      };
    });
    const overGrpc = createClient(RouterService, target.grpc()).getPayment(
      { tenantId: "ten_1", paymentId: "pay_in_flight_h2" },
      { timeoutMs: 5000 },
    );
    const overHttp1 = createClient(RouterService, target.connectJson()).getPayment(
      { tenantId: "ten_1", paymentId: "pay_in_flight_h1" },
      { timeoutMs: 5000 },
    );
    await within(bothStarted, 2000, "both calls reaching the handler");

    const closing = target.server.close();
    assert.equal(await connectionRefused(target.port), true, "a new connection is refused while draining");
    const [h2, h1] = await Promise.all([overGrpc, overHttp1]);
    assert.equal(h2.payment?.id, "pay_in_flight_h2");
    assert.equal(h1.payment?.id, "pay_in_flight_h1");
    await within(closing, 2000, "close()");

    assert.equal(await connectionRefused(target.port), true, "a new connection is refused after close()");
    const afterClose = await rejection(
      createClient(RouterService, target.grpc()).getPayment({ tenantId: "ten_1", paymentId: "pay_late" }, { timeoutMs: 2000 }),
    );
    assert.equal(afterClose.code, Code.Unavailable);
    assert.equal(target.health.status, ServingStatus.NOT_SERVING);
  });
  it("aborts a call still running when the grace period is over, with UNAVAILABLE naming the shutdown", async () => {
    let seen: unknown;
    let handlerReached: () => void = () => {};
    const reached = new Promise<void>((resolve) => (handlerReached = resolve));
    const stubborn = await startTestServer("router-stubborn-test", async () => {
      const signal = currentCallContext()?.signal as AbortSignal;
      handlerReached();
      await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
      seen = signal.reason;
      throw signal.reason;
    }, { COWRIE_SHUTDOWN_GRACE_MS: "200" });
    const call = rejection(createClient(RouterService, stubborn.grpc()).getPayment({ tenantId: "ten_1", paymentId: "pay_stubborn" }, { timeoutMs: 5000 }));
    await within(reached, 2000, "the call reaching the handler");
    await within(stubborn.server.close(), 2000, "close()");
    await stubborn.close();
    assert.ok(seen instanceof ConnectError, `the handler's signal was aborted with ${String(seen)}`);
    assert.equal(seen.code, Code.Unavailable);
    assert.match(seen.message, /router-stubborn-test is shutting down/);
    assert.equal((await call).code, Code.Unavailable);
    assert.ok(stubborn.logLines().some((line) => line.msg === "grace period over; closing with calls in flight" && line.inFlight === 1));
  });
});
