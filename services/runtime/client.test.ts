// Service-to-service calls over real sockets: deadlines that shrink hop by hop, request ids that
// follow the call, the circuit breaker, and a grpc-js client calling a Cowrie server with nothing
// but the generated protobuf-es code. Server A (Router contract) calls server B (Risk contract)
// through createServiceClient(); both handlers are controllable test doubles.
import { after, before, beforeEach, describe, it } from "node:test";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { create, type Message } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type HandlerContext } from "@connectrpc/connect";
import { Http2SessionManager, createConnectTransport } from "@connectrpc/connect-node";
import {
  Decision,
  EvaluateResponseSchema,
  RiskService,
  type EvaluateRequest,
  type EvaluateResponse,
} from "../../gen/cowrie/risk/v1/risk_pb.js";
import {
  GetPaymentRequestSchema,
  GetPaymentResponseSchema,
  PaymentStatus,
  RouterService,
  type GetPaymentRequest,
  type GetPaymentResponse,
} from "../../gen/cowrie/router/v1/router_pb.js";
import { currentCallContext, remainingMs } from "./call-context.js";
import { InFlightLimit, createServiceClient } from "./client.js";
import type { Config } from "./config.js";
import { HealthState } from "./health.js";
import { metrics } from "./metrics.js";
import { REQUEST_ID_HEADER, startServer, type RunningServer } from "./server.js";
import { capturingLogger, freePorts, rejection, testConfig } from "./testing.js";
import { grpcServiceDefinition } from "./grpc-js.js";

/** One unary call on a generic grpc-js client, as a promise. */
function grpcUnary<O>(client: grpc.Client, method: string, request: Message, options: grpc.CallOptions): Promise<O> {
  const call = (client as unknown as Record<string, grpc.requestCallback<O> | undefined>)[method];
  assert.ok(call, `the client has no method ${method}`);
  return new Promise((resolve, reject) => {
    const callback: grpc.requestCallback<O> = (error, response) => (error ? reject(error) : resolve(response as O));
    (call as unknown as (...args: unknown[]) => void).call(client, request, new grpc.Metadata(), options, callback);
  });
}

type Handler<I, O> = (request: I, context: HandlerContext) => Promise<O>;

interface Started {
  readonly port: number;
  readonly baseUrl: string;
  readonly server: RunningServer;
}

async function startOn<I, O>(
  name: string,
  service: typeof RouterService | typeof RiskService,
  handler: Handler<I, O>,
  options: { config: Config; log: ReturnType<typeof capturingLogger>["log"]; port?: number },
): Promise<Started> {
  const health = new HealthState(name, [service.typeName], [], options.log);
  await health.start(60_000, 500);
  const server = await startServer({
    name,
    host: "127.0.0.1",
    port: options.port ?? 0,
    config: options.config,
    log: options.log,
    services: [service],
    routes: (router) =>
      service === RouterService
        ? router.service(RouterService, { getPayment: handler as unknown as Handler<GetPaymentRequest, GetPaymentResponse> })
        : router.service(RiskService, { evaluate: handler as unknown as Handler<EvaluateRequest, EvaluateResponse> }),
    health,
  });
  return { port: server.port, baseUrl: `http://127.0.0.1:${server.port}`, server };
}

function allow(reasons: string[] = []): EvaluateResponse {
  return create(EvaluateResponseSchema, { decision: Decision.ALLOW, score: 7, reasons });
}

async function breakerState(caller: string, target: string): Promise<number | undefined> {
  const gauge = await metrics().breakerState.get();
  return gauge.values.find((value) => value.labels.service === caller && value.labels.target === target)?.value;
}

/** What server B saw of one call. */
interface Seen {
  requestId: string | undefined;
  remainingMs: number | undefined;
  timeoutHeader: Record<string, string | null>;
}

describe("InFlightLimit", () => {
  it("runs at most its limit at once, hands a freed slot to the first in line, and lets a waiting call leave without running", async () => {
    const waitingSeen: number[] = [];
    const limit = new InFlightLimit(1, (waiting) => waitingSeen.push(waiting));
    const first = await limit.acquire(() => AbortSignal.timeout(5000));
    const leaving = new AbortController();
    const second = limit.acquire(() => leaving.signal);
    let thirdRan = false;
    const third = limit.acquire(() => AbortSignal.timeout(5000)).then((release) => {
      thirdRan = true;
      return release;
    });
    leaving.abort(new Error("caller gone"));
    await assert.rejects(second, /caller gone/);
    assert.equal(thirdRan, false);
    first();
    first(); // a slot is given back once, however often release is called
    const releaseThird = await third;
    assert.equal(thirdRan, true);
    assert.deepEqual(waitingSeen, [1, 2, 1, 0], "two joined the line, one left it, one took the freed slot");
    releaseThird();
    // The slot came back, once: a new call takes it at once, and the next would have to wait.
    const fourth = await limit.acquire(() => AbortSignal.abort(new Error("would have waited")));
    await assert.rejects(limit.acquire(() => AbortSignal.abort(new Error("would have waited"))), /would have waited/);
    fourth();
  });
});

describe("createServiceClient()", () => {
  const HOP_MARGIN_MS = 50;
  const baseEnv = { COWRIE_HOP_MARGIN_MS: String(HOP_MARGIN_MS), COWRIE_SHUTDOWN_GRACE_MS: "1000" };
  const configA = testConfig(baseEnv);
  const configAHopCapped = testConfig({ ...baseEnv, COWRIE_HOP_TIMEOUT_MAX_MS: "300" });
  const configB = testConfig(baseEnv);
  const logsA = capturingLogger();
  const logsB = capturingLogger();
  const sessions: Http2SessionManager[] = [];

  let a: Started;
  let b: Started;
  let riskFromA: Client<typeof RiskService>;
  let riskFromAHopCapped: Client<typeof RiskService>;
  let router: Client<typeof RouterService>;

  /** Which outbound client A's handler uses, and what it does before calling B. */
  let viaA: { client: () => Client<typeof RiskService>; before?: () => Promise<void> };
  let outboundErrors: unknown[] = [];
  let seenAtB: Seen[] = [];
  let answerB: (request: EvaluateRequest) => Promise<EvaluateResponse> = async () => allow();

  before(async () => {
    b = await startOn<EvaluateRequest, EvaluateResponse>("risk-b", RiskService, async (request, context) => {
      const callContext = currentCallContext();
      seenAtB.push({
        requestId: callContext?.requestId,
        remainingMs: callContext ? remainingMs(callContext) : undefined,
        timeoutHeader: {
          "connect-timeout-ms": context.requestHeader.get("connect-timeout-ms"),
          "grpc-timeout": context.requestHeader.get("grpc-timeout"),
        },
      });
      return answerB(request);
    }, { config: configB, log: logsB.log });

    a = await startOn<GetPaymentRequest, GetPaymentResponse>("router-a", RouterService, async (request) => {
      await viaA.before?.();
      let decision: EvaluateResponse;
      try {
        decision = await viaA.client().evaluate({ tenantId: request.tenantId, paymentId: request.paymentId, amountMinor: 100n });
      } catch (error) {
        outboundErrors.push(error);
        throw error;
      }
      return create(GetPaymentResponseSchema, {
        payment: {
          id: request.paymentId,
          tenantId: request.tenantId,
          status: decision.decision === Decision.ALLOW ? PaymentStatus.SUCCEEDED : PaymentStatus.FAILED,
          failureCode: decision.reasons.join(","),
        },
      });
    }, { config: configA, log: logsA.log });

    const clientOptions = { caller: "router-a", target: "risk-b", baseUrl: b.baseUrl, log: logsA.log };
    riskFromA = createServiceClient(RiskService, { ...clientOptions, config: configA });
    riskFromAHopCapped = createServiceClient(RiskService, { ...clientOptions, target: "risk-b-capped", config: configAHopCapped });

    const session = new Http2SessionManager(a.baseUrl);
    sessions.push(session);
    router = createClient(
      RouterService,
      createConnectTransport({ baseUrl: a.baseUrl, httpVersion: "2", useBinaryFormat: true, sessionManager: session }),
    );
  });

  beforeEach(() => {
    viaA = { client: () => riskFromA };
    outboundErrors = [];
    seenAtB = [];
    answerB = async () => allow();
  });

  after(async () => {
    for (const session of sessions) session.abort();
    await Promise.all([a.server.close(), b.server.close()]);
  });

  it("propagates the caller's deadline, shrunk by the hop margin, to the next hop", async () => {
    const response = await router.getPayment({ tenantId: "ten_1", paymentId: "pay_1" }, { timeoutMs: 2000 });
    assert.equal(response.payment?.status, PaymentStatus.SUCCEEDED);
    assert.equal(seenAtB.length, 1);
    const seen = seenAtB[0]!;
    const header = Number(seen.timeoutHeader["connect-timeout-ms"]);
    assert.ok(header > 0 && header <= 2000 - HOP_MARGIN_MS, `B was given ${header} ms`);
    assert.ok(seen.remainingMs !== undefined && seen.remainingMs > 0, `B had ${seen.remainingMs} ms left`);
    // B's clock starts when the request arrives, so it never has more than it was given.
    assert.ok(seen.remainingMs <= header, `B had ${seen.remainingMs} ms left of the ${header} ms it was given`);
  });

  it("caps each hop's deadline at COWRIE_HOP_TIMEOUT_MAX_MS", async () => {
    viaA = { client: () => riskFromAHopCapped };
    await router.getPayment({ tenantId: "ten_1", paymentId: "pay_2" }, { timeoutMs: 2000 });
    assert.equal(seenAtB.length, 1);
    const seen = seenAtB[0]!;
    const header = Number(seen.timeoutHeader["connect-timeout-ms"]);
    assert.ok(header > 0 && header <= 300, `B was given ${header} ms`);
    assert.ok(seen.remainingMs !== undefined && seen.remainingMs > 0 && seen.remainingMs <= 300, `B had ${seen.remainingMs} ms left`);
  });

  it("carries the request id given to A into B's call context and both servers' log lines", async () => {
    const requestId = `req-hop-${Date.now()}`;
    let returned: string | null = null;
    await router.getPayment(
      { tenantId: "ten_1", paymentId: "pay_3" },
      { timeoutMs: 2000, headers: { [REQUEST_ID_HEADER]: requestId }, onHeader: (headers) => (returned = headers.get(REQUEST_ID_HEADER)) },
    );
    assert.equal(returned, requestId);
    assert.equal(seenAtB[0]?.requestId, requestId);
    const linesA = logsA.lines().filter((line) => line.msg === "rpc" && line.requestId === requestId);
    const linesB = logsB.lines().filter((line) => line.msg === "rpc" && line.requestId === requestId);
    assert.deepEqual(linesA.map((line) => [line.rpc, line.code]), [[`${RouterService.typeName}/GetPayment`, "ok"]]);
    assert.deepEqual(linesB.map((line) => [line.rpc, line.code]), [[`${RiskService.typeName}/Evaluate`, "ok"]]);
  });

  it("fails with DEADLINE_EXCEEDED without reaching B when less than the margin is left", async () => {
    viaA = {
      client: () => riskFromA,
      // Spend A's budget until less than the hop margin (but some time) is left.
      before: async () => {
        const context = currentCallContext();
        assert.ok(context);
        await sleep(Math.max(0, remainingMs(context) - HOP_MARGIN_MS / 2));
      },
    };
    const error = await rejection(router.getPayment({ tenantId: "ten_1", paymentId: "pay_4" }, { timeoutMs: 300 }));
    assert.equal(error.code, Code.DeadlineExceeded);
    assert.equal(seenAtB.length, 0, "B was never called");
    assert.equal(outboundErrors.length, 1);
    const outbound = ConnectError.from(outboundErrors[0]);
    assert.equal(outbound.code, Code.DeadlineExceeded);
    assert.match(outbound.rawMessage, /no time left/);
  });

  it("never opens the breaker on business errors: every call reaches B", async () => {
    const config = testConfig({ ...baseEnv, COWRIE_BREAKER_FAILURES: "3" });
    const risk = createServiceClient(RiskService, {
      caller: "router-a",
      target: "risk-b-business",
      baseUrl: b.baseUrl,
      config,
      log: logsA.log,
    });
    const codes = [Code.FailedPrecondition, Code.InvalidArgument, Code.NotFound];
    let call = 0;
    answerB = async () => {
      throw new ConnectError("decided no", codes[call++ % codes.length]);
    };
    for (let i = 0; i < 10; i++) {
      const error = await rejection(risk.evaluate({ paymentId: `pay_b${i}` }));
      assert.equal(error.code, codes[i % codes.length]);
    }
    assert.equal(seenAtB.length, 10, "every call reached B");
    assert.equal(await breakerState("router-a", "risk-b-business"), 0, "the breaker stays closed");
  });

  it("keeps its connection when a burst of calls is given up: past the in-flight limit, calls wait off the wire", async () => {
    // Unbounded, the 1,500 calls given up would reset 1,500 HTTP/2 streams; nghttp2 under B takes
    // a burst of 1,000 resets for the Rapid Reset attack and closes the connection, and every
    // other call on it (the patient ones here) fails INTERNAL, "Session closed with error code 2".
    answerB = async () => {
      await sleep(1000);
      return allow();
    };
    await riskFromA.evaluate({ paymentId: "pay_warm" });
    const patient = Array.from({ length: 50 }, (_, index) =>
      riskFromA.evaluate({ paymentId: `pay_patient${index}` }).then(() => "ok", (error: unknown) => Code[ConnectError.from(error).code]),
    );
    const givingUp = new AbortController();
    const abandoned = Array.from({ length: 1500 }, (_, index) =>
      riskFromA.evaluate({ paymentId: `pay_abandoned${index}` }, { signal: givingUp.signal }).catch((error: unknown) => ConnectError.from(error).code),
    );
    await sleep(100);
    givingUp.abort();
    const abandonedCodes = new Set(await Promise.all(abandoned));
    assert.deepEqual([...abandonedCodes].map((code) => Code[code as Code]), ["Canceled"]);
    assert.deepEqual((await Promise.all(patient)).filter((outcome) => outcome !== "ok"), []);
    // Only the calls that held one of the 256 slots reached B.
    assert.ok(seenAtB.length <= 1 + 256, `${seenAtB.length} calls reached B`);
  });

  it("keeps its connection while hundreds of calls expire: the target ends them at their deadline, nothing is reset", async () => {
    // No in-flight limit to hide behind: 1,500 calls expire within a few hundred milliseconds.
    // Cancelled here, each would reset its HTTP/2 stream, and past 1,000 resets nghttp2 under B
    // closes the connection (Rapid Reset protection), failing the patient calls with it. B ends
    // each call itself at the deadline the call carries, and the stream closes normally.
    answerB = async (request) => {
      await sleep(request.paymentId.startsWith("pay_expiring") ? 800 : 300);
      return allow();
    };
    const unbounded = createServiceClient(RiskService, {
      caller: "router-a",
      target: "risk-b-unbounded",
      baseUrl: `${b.baseUrl}/`,
      config: testConfig({ ...baseEnv, COWRIE_CLIENT_MAX_IN_FLIGHT: "5000" }),
      log: logsA.log,
    });
    await unbounded.evaluate({ paymentId: "pay_warm" });
    const patient = Array.from({ length: 50 }, (_, index) =>
      unbounded.evaluate({ paymentId: `pay_patient${index}` }, { timeoutMs: 5_000 }).then(() => "ok", (error: unknown) => ConnectError.from(error).rawMessage),
    );
    const startedAt = Date.now();
    const expiring = await Promise.all(Array.from({ length: 1500 }, (_, index) =>
      rejection(unbounded.evaluate({ paymentId: `pay_expiring${index}` }, { timeoutMs: 150 }))));
    assert.deepEqual([...new Set(expiring.map((error) => Code[error.code]))], ["DeadlineExceeded"]);
    assert.ok(Date.now() - startedAt < 3_000, "each caller had its answer at its deadline, not when the call left the wire");
    assert.deepEqual((await Promise.all(patient)).filter((outcome) => outcome !== "ok"), []);
  });

  it("answers UNAVAILABLE, outcome unknown, for calls on a connection the target closed under them", async () => {
    // A target that closes the connection with an error (GOAWAY INTERNAL_ERROR: what nghttp2 does
    // past its reset limit) under 20 calls in flight: connect-node reports INTERNAL.
    const closing = http2.createServer();
    let open = 0;
    closing.on("stream", (stream) => {
      stream.on("error", () => {});
      if (++open === 20) stream.session?.goaway(http2.constants.NGHTTP2_INTERNAL_ERROR);
    });
    await new Promise<void>((resolve) => closing.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = closing.address() as AddressInfo;
      const risk = createServiceClient(RiskService, { caller: "router-a", target: "risk-closing", baseUrl: `http://127.0.0.1:${port}`, config: configA, log: logsA.log });
      const failures = await Promise.all(Array.from({ length: 20 }, (_, index) => rejection(risk.evaluate({ paymentId: `pay_cut${index}` }, { timeoutMs: 5_000 }))));
      assert.deepEqual([...new Set(failures.map((error) => Code[error.code]))], ["Unavailable"]);
      assert.match(failures[0]!.rawMessage, /connection to risk-closing was closed during the call.*outcome is unknown/);
    } finally {
      closing.close();
    }
  });

  it("opens the breaker after consecutive transport failures, fails fast, and closes once the target answers", async () => {
    const [port] = (await freePorts(1)) as [number];
    const baseUrl = `http://127.0.0.1:${port}`;
    const config = testConfig({
      ...baseEnv,
      COWRIE_BREAKER_FAILURES: "3",
      COWRIE_BREAKER_HALF_OPEN_AFTER_MS: "200",
    });
    const risk = createServiceClient(RiskService, { caller: "router-a", target: "risk-down", baseUrl, config, log: logsA.log });
    assert.equal(await breakerState("router-a", "risk-down"), 0);

    for (let i = 0; i < 3; i++) {
      const error = await rejection(risk.evaluate({ paymentId: `pay_down${i}` }));
      assert.equal(error.code, Code.Unavailable, `call ${i + 1}`);
      assert.doesNotMatch(error.rawMessage, /circuit breaker/, `call ${i + 1} reached the transport`);
    }
    const startedAt = Date.now();
    const fast = await rejection(risk.evaluate({ paymentId: "pay_fast" }));
    assert.equal(fast.code, Code.Unavailable);
    assert.match(fast.rawMessage, /circuit breaker open/);
    assert.equal(fast.metadata.get("retry-after"), "1", "it says when the next probe goes through, in whole seconds");
    assert.ok(Date.now() - startedAt < 50, "an open breaker fails fast");
    assert.equal(await breakerState("router-a", "risk-down"), 1, "the gauge shows open");

    const revived = await startOn<EvaluateRequest, EvaluateResponse>("risk-revived", RiskService, async () => allow(["REVIVED"]), {
      config: configB,
      log: logsB.log,
      port,
    });
    try {
      await sleep(250);
      const response = await risk.evaluate({ paymentId: "pay_probe" });
      assert.deepEqual(response.reasons, ["REVIVED"]);
      assert.equal(await breakerState("router-a", "risk-down"), 0, "the breaker closed again");
    } finally {
      await revived.server.close();
    }
  });

  it("does not open the breaker for calls that waited in line until little time was left, but does for fresh calls that expire", async () => {
    // One slot: "hold" keeps it 500 ms, so "late" (800 ms) goes out with about 300 ms, less than
    // half its time, and expires at the slow target. Under overload such expiries are the queue's
    // doing; counted, they would open the breaker and fail every call waiting behind them.
    const reached: string[] = [];
    const slow = await startOn<EvaluateRequest, EvaluateResponse>("risk-slow", RiskService, async (request) => {
      reached.push(request.paymentId);
      await sleep(request.paymentId.startsWith("pay_hold") ? 500 : 2000);
      return allow();
    }, { config: configB, log: logsB.log });
    try {
      const config = testConfig({ ...baseEnv, COWRIE_CLIENT_MAX_IN_FLIGHT: "1", COWRIE_BREAKER_FAILURES: "2", COWRIE_BREAKER_HALF_OPEN_AFTER_MS: "60000" });
      const risk = createServiceClient(RiskService, { caller: "router-a", target: "risk-slow", baseUrl: slow.baseUrl, config, log: logsA.log });
      await risk.evaluate({ paymentId: "pay_hold_connect" });
      for (let round = 0; round < 3; round++) {
        const hold = risk.evaluate({ paymentId: `pay_hold${round}` }, { timeoutMs: 5000 });
        const late = rejection(risk.evaluate({ paymentId: `pay_late${round}` }, { timeoutMs: 800 }));
        await hold;
        assert.equal((await late).code, Code.DeadlineExceeded, `round ${round}`);
      }
      assert.deepEqual(reached.filter((id) => id.startsWith("pay_late")), ["pay_late0", "pay_late1", "pay_late2"], "the late calls went out");
      assert.equal(await breakerState("router-a", "risk-slow"), 0, "three expiries in a row, and the breaker stayed closed");

      for (let i = 0; i < 2; i++) {
        const fresh = await rejection(risk.evaluate({ paymentId: `pay_fresh${i}` }, { timeoutMs: 200 }));
        assert.equal(fresh.code, Code.DeadlineExceeded);
      }
      assert.equal(await breakerState("router-a", "risk-slow"), 1, "two fresh expiries opened it");
      assert.match((await rejection(risk.evaluate({ paymentId: "pay_after" }))).rawMessage, /circuit breaker open/);
    } finally {
      await slow.server.close();
    }
  });

  it("counts the calls that expire together in one stall once, but opens the breaker on a target that stays silent", async () => {
    // A stall (the target's or this process's) longer than the deadline expires every call on the
    // wire at once. Counted one by one, ten of them would open a breaker that needs three.
    const stalled = await startOn<EvaluateRequest, EvaluateResponse>("risk-stall", RiskService, async (request) => {
      if (request.paymentId.startsWith("pay_stall") || request.paymentId.startsWith("pay_silent")) await sleep(400);
      return allow();
    }, { config: configB, log: logsB.log });
    try {
      const config = testConfig({ ...baseEnv, COWRIE_BREAKER_FAILURES: "3", COWRIE_BREAKER_HALF_OPEN_AFTER_MS: "60000" });
      const risk = createServiceClient(RiskService, { caller: "router-a", target: "risk-stall", baseUrl: stalled.baseUrl, config, log: logsA.log });
      await risk.evaluate({ paymentId: "pay_connect" });
      const together = await Promise.all(Array.from({ length: 10 }, (_, index) => rejection(risk.evaluate({ paymentId: `pay_stall${index}` }, { timeoutMs: 100 }))));
      assert.deepEqual(new Set(together.map((error) => Code[error.code])), new Set(["DeadlineExceeded"]));
      assert.equal(await breakerState("router-a", "risk-stall"), 0, "ten expiries of one stall, and the breaker stayed closed");
      assert.deepEqual((await risk.evaluate({ paymentId: "pay_after_stall" })).reasons, []);

      // Silent for wave after wave: each wave is sent after the previous one's expiry was counted.
      for (let wave = 0; wave < 3; wave++) {
        const expired = await Promise.all(Array.from({ length: 4 }, (_, index) => rejection(risk.evaluate({ paymentId: `pay_silent${wave}_${index}` }, { timeoutMs: 100 }))));
        assert.ok(expired.every((error) => error.code === Code.DeadlineExceeded), `wave ${wave}`);
      }
      assert.equal(await breakerState("router-a", "risk-stall"), 1, "three waves of expiries opened it");
      assert.match((await rejection(risk.evaluate({ paymentId: "pay_fast" }))).rawMessage, /circuit breaker open/);
    } finally {
      await stalled.server.close();
    }
  });

  it("keeps calls of another lane off the target's slots: long waits cannot hold up short calls", async () => {
    // One slot per lane. The waiting lane's slot is held by a call the target keeps for a second;
    // a second waiting call queues behind it, while a call of the default lane goes straight through.
    const target = await startOn<EvaluateRequest, EvaluateResponse>("risk-lanes", RiskService, async (request) => {
      if (request.paymentId.startsWith("pay_long")) await sleep(1000);
      return allow();
    }, { config: configB, log: logsB.log });
    try {
      const config = testConfig({ ...baseEnv, COWRIE_CLIENT_MAX_IN_FLIGHT: "1" });
      const lanes = { caller: "router-a", target: "risk-lanes", baseUrl: target.baseUrl, config, log: logsA.log };
      const short = createServiceClient(RiskService, lanes);
      const waiting = createServiceClient(RiskService, { ...lanes, lane: "waiting" });
      const long = waiting.evaluate({ paymentId: "pay_long1" });
      const queued = waiting.evaluate({ paymentId: "pay_long2" });
      await sleep(100);
      const waitingGauge = (await metrics().clientWaitingCalls.get()).values;
      assert.equal(waitingGauge.find((value) => value.labels.target === "risk-lanes/waiting")?.value, 1, "the second long call waits for its lane's slot");
      const startedAt = Date.now();
      await short.evaluate({ paymentId: "pay_short" });
      assert.ok(Date.now() - startedAt < 500, `the short call took ${Date.now() - startedAt} ms: it waited behind the long ones`);
      await Promise.all([long, queued]);
      const requests = (await metrics().clientRequests.get()).values.filter((value) => String(value.labels.target).startsWith("risk-lanes"));
      assert.deepEqual(requests.map((value) => [value.labels.target, value.value]).sort(), [["risk-lanes", 1], ["risk-lanes/waiting", 2]]);
      // The queued call's wait is in the slot-wait histogram; calls that found a slot are not.
      const waits = (await metrics().clientSlotWaitSeconds.get()).values.filter((value) => String(value.labels.target).startsWith("risk-lanes"));
      const count = waits.find((value) => value.metricName === "cowrie_client_slot_wait_seconds_count");
      const sum = waits.find((value) => value.metricName === "cowrie_client_slot_wait_seconds_sum");
      assert.deepEqual([count?.labels.target, count?.value], ["risk-lanes/waiting", 1]);
      assert.ok((sum?.value ?? 0) > 0.5, `the queued call waited ${sum?.value} s for the held slot`);
    } finally {
      await target.server.close();
    }
  });

  it("serves a grpc-js client that uses only the generated protobuf-es code", async () => {
    answerB = async (request) => allow([`seen:${request.paymentId}`]);
    const RouterClient = grpc.makeGenericClientConstructor(grpcServiceDefinition(RouterService), "RouterService");
    const client = new RouterClient(`127.0.0.1:${a.port}`, grpc.credentials.createInsecure());
    try {
      const response = await grpcUnary<GetPaymentResponse>(
        client,
        "getPayment",
        create(GetPaymentRequestSchema, { tenantId: "ten_grpcjs", paymentId: "pay_grpcjs" }),
        { deadline: Date.now() + 2000 },
      );
      assert.equal(response.payment?.id, "pay_grpcjs");
      assert.equal(response.payment?.status, PaymentStatus.SUCCEEDED);
      assert.equal(response.payment?.failureCode, "seen:pay_grpcjs");
      // The grpc-timeout sent by grpc-js became A's deadline, and shrank on the way to B.
      const header = Number(seenAtB[0]?.timeoutHeader["connect-timeout-ms"]);
      assert.ok(header > 0 && header <= 2000 - HOP_MARGIN_MS, `B was given ${header} ms`);

      answerB = async () => {
        throw new ConnectError("no such payment", Code.NotFound);
      };
      const failure = await grpcUnary<GetPaymentResponse>(
        client,
        "getPayment",
        create(GetPaymentRequestSchema, { tenantId: "ten_grpcjs", paymentId: "pay_missing" }),
        { deadline: Date.now() + 2000 },
      ).then(
        () => assert.fail("expected NOT_FOUND"),
        (error: grpc.ServiceError) => error,
      );
      assert.equal(failure.code, grpc.status.NOT_FOUND);
      assert.equal(failure.details, "no such payment");
    } finally {
      client.close();
    }
  });
});
