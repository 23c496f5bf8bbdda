// The load-generating side of `npm run bench:spike` (bench/spike.ts). The parent starts this file
// as a child process and drives it over the IPC channel: one "setup" (where the Edge is, the API
// key, the merchant wallets), then one phase at a time:
//   sustain  `concurrency` workers, each with one gateway pay-in in flight: it creates the
//            pay-in (without waiting, as in the spike) and then waits until the payment is final,
//            as router.payments shows it (one batched query for all the workers every 50 ms), so
//            the pay-ins that end SUCCEEDED per second in the window are the rate the whole mesh
//            completes them end to end, with the backlog kept at `concurrency` by the closed loop.
//            (Not wait_for_outcome: a wait that overruns its deadline under load counts against
//            the Edge's circuit breaker to the Router, and an open breaker fails every call.)
//   spike    pay-ins created without waiting, started on a fixed schedule (`ratePerSecond` for
//            `seconds`) whatever the answers do, so latency counts from when a call was due (no
//            coordinated omission); a share of the calls retry an earlier key of the phase, whose
//            first call has been answered, and must come back replayed with the same payment id.
// Every call is PaymentsService.CreatePayment through the generated Connect client over HTTP/2
// (binary), with the API key, an Idempotency-Key and a deadline. Each result lists the payments
// the Edge accepted (id and amount), so the parent can check that every one of them ends
// SUCCEEDED, and how many fresh keys were sent, so it can tell a doubled payment. Nothing here
// loops without an end: every phase is bounded by the clock and every call by its deadline.
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import postgres from "postgres";
import { PaymentKind, PaymentStatus, type CreatePaymentResponse } from "../gen/cowrie/edge/v1/payments_pb.js";
import { PaymentStatus as RouterPaymentStatus } from "../gen/cowrie/router/v1/router_pb.js";
import { BenchCheck, EdgePayments, FINAL_STATUSES, describeFailure, openLoop, sendToParent, serveLoad, summarize, type LatencySummary } from "./support.js";

export interface SpikeSetupMessage {
  type: "setup";
  edgeUrl: string;
  apiKey: string;
  currency: string;
  country: string;
  /** Merchant wallets the pay-ins credit. */
  merchants: string[];
  /** HTTP/2 connections the calls are spread over. */
  connections: number;
  /** Deadline on every call. */
  timeoutMs: number;
  /** Makes idempotency keys unique to this run. */
  runTag: string;
  /** The mesh's database, where the sustain phase sees its payments become final. */
  databaseUrl: string;
}

export interface SustainMessage {
  type: "sustain";
  id: string;
  warmupSeconds: number;
  seconds: number;
  concurrency: number;
}

export interface SpikeMessage {
  type: "spike";
  id: string;
  /** Calls (fresh and retries) started per second. */
  ratePerSecond: number;
  seconds: number;
  /** Share of the calls that retry an earlier key of the phase (0..0.5). */
  retryShare: number;
  /** Most calls in flight; a due call beyond it is not sent and counts as the error `shed`. */
  maxInFlight: number;
}

/** A payment the Edge accepted: its id and amount in minor units (a decimal string). */
export interface Accepted {
  id: string;
  amountMinor: string;
}

export interface SustainResult {
  type: "result";
  id: string;
  /** Length of the measured window, seconds. */
  windowSeconds: number;
  /** Pay-ins that became SUCCEEDED inside the window. */
  completed: number;
  /** Pay-ins not final within FINAL_WAIT_MAX_MS of their creation, whole phase. */
  notFinalInTime: number;
  /** Latency of the calls completed in the window (create to final). */
  latency: LatencySummary;
  errors: Record<string, number>;
  firstErrors: string[];
  /** Every payment accepted in the phase, warm-up included. */
  accepted: Accepted[];
  /** Fresh Idempotency-Keys sent in the phase. */
  keysSent: number;
}

export interface SpikeResult {
  type: "result";
  id: string;
  /** Calls that were due on the schedule (fresh and retries). */
  due: number;
  /** From the first call due to the last, seconds. */
  scheduleSeconds: number;
  /** Fresh keys answered with a payment (not replayed). */
  acceptedFresh: number;
  /** Retries answered replayed with the payment of their key. */
  replaysChecked: number;
  /** Latency of every answered call (fresh and retries), from when it was due. */
  accept: LatencySummary;
  /** Latency of the retries alone. */
  retry: LatencySummary;
  /** p99 of the accept latency of the calls due in each second of the schedule, in ms. */
  acceptP99BySecondMs: number[];
  /** Failures by kind and code ("fresh:deadline_exceeded", "retry:replay_mismatch", "shed"...). */
  errors: Record<string, number>;
  firstErrors: string[];
  /** Calls whose outcome is unknown (transport errors, deadlines): they may have made a payment. */
  unknownOutcomes: number;
  maxInFlightSeen: number;
  /** Answers by payment status, fresh keys only (CREATED expected). */
  statuses: Record<string, number>;
  accepted: Accepted[];
  keysSent: number;
}

export type SpikeChildMessage =
  | SustainResult
  | SpikeResult
  | { type: "spike-end"; id: string }
  | { type: "ready" }
  | { type: "setup-done" }
  | { type: "fatal"; message: string };

/** The fields of one pay-in: what a retry must send again unchanged. Its key is its reference too. */
interface PayIn {
  key: string;
  destinationWalletId: string;
  amountMinor: bigint;
  paymentMethod: string;
  customerEmail: string;
}

const FIRST_ERRORS_MAX = 8;
/** How often the sustain phase asks which of its payments are final. */
const FINAL_POLL_INTERVAL_MS = 50;
/** Longest a sustain worker waits for its payment to be final before it goes on. */
const FINAL_WAIT_MAX_MS = 30_000;

/** Failures of one phase, by code, with the first of each code in full. */
class Errors {
  readonly byCode: Record<string, number> = {};
  readonly first: string[] = [];
  unknownOutcomes = 0;

  add(code: string, detail: string): void {
    const count = (this.byCode[code] ?? 0) + 1;
    this.byCode[code] = count;
    if (count === 1 && this.first.length < FIRST_ERRORS_MAX) this.first.push(`${code}: ${detail}`);
  }

  /** Records a failed call of `kind` ("fresh", "retry"...). */
  fromCall(kind: string, error: unknown): void {
    const { code, detail, outcomeUnknown } = describeFailure(error);
    if (outcomeUnknown) this.unknownOutcomes++;
    this.add(`${kind}:${code}`, detail);
  }
}

/**
 * Tells when payments become final, from router.payments: one query for every payment waited on,
 * every FINAL_POLL_INTERVAL_MS, while any is.
 */
class FinalWatcher {
  private readonly waiting = new Map<string, (status: number | undefined) => void>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly sql: postgres.Sql) {}

  /** The payment's final status, or undefined if it is not final within `timeoutMs`. */
  wait(paymentId: string, timeoutMs: number): Promise<number | undefined> {
    return new Promise((resolve) => {
      const timeout = setTimeout(() => this.settle(paymentId, undefined), timeoutMs);
      this.waiting.set(paymentId, (status) => {
        clearTimeout(timeout);
        resolve(status);
      });
      this.timer ??= setTimeout(() => void this.poll(), FINAL_POLL_INTERVAL_MS);
    });
  }

  private settle(paymentId: string, status: number | undefined): void {
    const resolve = this.waiting.get(paymentId);
    this.waiting.delete(paymentId);
    resolve?.(status);
  }

  private async poll(): Promise<void> {
    try {
      const rows = await this.sql<{ id: string; status: number }[]>`
        select id, status from router.payments
        where id = any(${[...this.waiting.keys()]}) and status = any(${FINAL_STATUSES})`;
      for (const row of rows) this.settle(row.id, row.status);
    } catch {
      // A failed poll is retried on the next tick; each wait is bounded by its own timeout.
    }
    this.timer = this.waiting.size > 0 ? setTimeout(() => void this.poll(), FINAL_POLL_INTERVAL_MS) : undefined;
  }
}

class Load {
  private readonly edge: EdgePayments;
  private readonly sql: postgres.Sql;
  readonly finals: FinalWatcher;
  private seq = 0;

  constructor(private readonly setup: SpikeSetupMessage) {
    this.edge = new EdgePayments(setup.edgeUrl, setup.connections);
    this.sql = postgres(setup.databaseUrl, { max: 1, onnotice: () => {}, connection: { application_name: "cowrie-bench-load" } });
    this.finals = new FinalWatcher(this.sql);
  }

  close(): void {
    this.edge.close();
    void this.sql.end({ timeout: 1 });
  }

  /** A fresh pay-in: a new key, a merchant, 1.00 to 1,000.00 NGN, a payment method the simulator charges. */
  fresh(phase: string): PayIn {
    const seq = ++this.seq;
    return {
      key: `${this.setup.runTag}-${phase}-${seq}`,
      destinationWalletId: this.setup.merchants[seq % this.setup.merchants.length] as string,
      amountMinor: 100n + BigInt(Math.floor(Math.random() * 99_900)),
      paymentMethod: `AUTH_spike_${seq}`,
      customerEmail: `payer-${seq}@example.com`,
    };
  }

  create(payIn: PayIn): Promise<CreatePaymentResponse> {
    return this.edge.client().createPayment(
      {
        kind: PaymentKind.PAY_IN,
        destinationWalletId: payIn.destinationWalletId,
        amountMinor: payIn.amountMinor,
        currency: this.setup.currency,
        paymentMethod: payIn.paymentMethod,
        customerEmail: payIn.customerEmail,
        country: this.setup.country,
        reference: payIn.key,
      },
      { timeoutMs: this.setup.timeoutMs, headers: { authorization: `Bearer ${this.setup.apiKey}`, "idempotency-key": payIn.key } },
    );
  }
}

/** The payment of a fresh key's answer; a missing or replayed one is a failed check. */
function acceptedPayment(payIn: PayIn, response: CreatePaymentResponse) {
  const payment = response.payment;
  if (!payment) throw new BenchCheck("no_payment", `key ${payIn.key}: CreatePayment answered without a payment`);
  if (response.replayed) throw new BenchCheck("unexpected_replay", `fresh key ${payIn.key} came back replayed`);
  return payment;
}

async function runSustain(load: Load, message: SustainMessage): Promise<SustainResult> {
  const startMs = performance.now();
  const measureStartMs = startMs + message.warmupSeconds * 1000;
  const measureEndMs = measureStartMs + message.seconds * 1000;
  const errors = new Errors();
  const latencies: number[] = [];
  const accepted: Accepted[] = [];
  let notFinalInTime = 0;
  let keysSent = 0;
  const worker = async (): Promise<void> => {
    while (performance.now() < measureEndMs) {
      const payIn = load.fresh(message.id);
      keysSent++;
      const sentAt = performance.now();
      try {
        const payment = acceptedPayment(payIn, await load.create(payIn));
        accepted.push({ id: payment.id, amountMinor: String(payIn.amountMinor) });
        const status = await load.finals.wait(payment.id, FINAL_WAIT_MAX_MS);
        const doneAt = performance.now();
        if (status === undefined) notFinalInTime++;
        else if (status !== RouterPaymentStatus.SUCCEEDED) errors.add(`status_${RouterPaymentStatus[status] ?? status}`, payment.id);
        else if (doneAt >= measureStartMs && doneAt <= measureEndMs) latencies.push(doneAt - sentAt);
      } catch (error) {
        errors.fromCall("sustain", error);
      }
    }
  };
  await Promise.all(Array.from({ length: message.concurrency }, () => worker()));
  return {
    type: "result",
    id: message.id,
    windowSeconds: (Math.min(performance.now(), measureEndMs) - measureStartMs) / 1000,
    completed: latencies.length,
    notFinalInTime,
    latency: summarize(latencies),
    errors: errors.byCode,
    firstErrors: errors.first,
    accepted,
    keysSent,
  };
}

async function runSpike(load: Load, message: SpikeMessage): Promise<SpikeResult> {
  const intervalMs = 1000 / message.ratePerSecond;
  const startMs = performance.now();
  const endMs = startMs + message.seconds * 1000;
  const errors = new Errors();
  const acceptLatencies: number[] = [];
  const retryLatencies: number[] = [];
  /** Accept latencies by the second of the schedule their call was due in. */
  const bySecond: number[][] = Array.from({ length: Math.ceil(message.seconds) }, () => []);
  const answeredIn = (dueAt: number, latencyMs: number): void => {
    acceptLatencies.push(latencyMs);
    bySecond[Math.min(bySecond.length - 1, Math.floor((dueAt - startMs) / 1000))]?.push(latencyMs);
  };
  const statuses: Record<string, number> = {};
  const accepted: Accepted[] = [];
  /** Fresh pay-ins already answered, with their payment: what a retry may repeat. */
  const answered: { payIn: PayIn; paymentId: string }[] = [];
  let keysSent = 0;
  let replaysChecked = 0;

  const fresh = async (dueAt: number): Promise<void> => {
    const payIn = load.fresh(message.id);
    keysSent++;
    try {
      const payment = acceptedPayment(payIn, await load.create(payIn));
      answeredIn(dueAt, performance.now() - dueAt);
      accepted.push({ id: payment.id, amountMinor: String(payIn.amountMinor) });
      answered.push({ payIn, paymentId: payment.id });
      const status = PaymentStatus[payment.status] ?? String(payment.status);
      statuses[status] = (statuses[status] ?? 0) + 1;
    } catch (error) {
      errors.fromCall("fresh", error);
    }
  };
  const retry = async (dueAt: number): Promise<void> => {
    const earlier = answered[Math.floor(Math.random() * answered.length)] as (typeof answered)[number];
    try {
      const response = await load.create(earlier.payIn);
      if (!response.replayed) throw new BenchCheck("replay_not_flagged", `key ${earlier.payIn.key} was not answered as a replay`);
      if (response.payment?.id !== earlier.paymentId) {
        throw new BenchCheck("replay_mismatch", `key ${earlier.payIn.key}: expected ${earlier.paymentId}, got ${response.payment?.id}`);
      }
      const latencyMs = performance.now() - dueAt;
      answeredIn(dueAt, latencyMs);
      retryLatencies.push(latencyMs);
      replaysChecked++;
    } catch (error) {
      errors.fromCall("retry", error);
    }
  };

  const { due, maxInFlightSeen, running } = await openLoop(
    { startMs, endMs, intervalMs, maxInFlight: message.maxInFlight },
    (dueAt) => (answered.length > 0 && Math.random() < message.retryShare ? retry(dueAt) : fresh(dueAt)),
    () => errors.add("shed", `more than ${message.maxInFlight} calls in flight`),
  );
  sendToParent({ type: "spike-end", id: message.id } satisfies SpikeChildMessage);
  const scheduleSeconds = ((due - 1) * intervalMs) / 1000;
  // The calls started finish (each is bounded by its deadline).
  await running;
  return {
    type: "result",
    id: message.id,
    due,
    scheduleSeconds,
    acceptedFresh: accepted.length,
    replaysChecked,
    accept: summarize(acceptLatencies),
    retry: summarize(retryLatencies),
    acceptP99BySecondMs: bySecond.map((latencies) => Math.round(summarize(latencies).p99Ms)),
    errors: errors.byCode,
    firstErrors: errors.first,
    unknownOutcomes: errors.unknownOutcomes,
    maxInFlightSeen,
    statuses,
    accepted,
    keysSent,
  };
}

function main(): void {
  serveLoad<SpikeSetupMessage, SustainMessage | SpikeMessage, Load>(
    "bench/spike-load.ts is started by bench/spike.ts (npm run bench:spike), not directly",
    (setup) => new Load(setup),
    (load, message) => (message.type === "sustain" ? runSustain(load, message) : message.type === "spike" ? runSpike(load, message) : undefined),
  );
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
