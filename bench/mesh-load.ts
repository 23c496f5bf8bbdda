// The load-generating side of `npm run bench` (bench/mesh.ts). The parent starts this file as a
// child process and drives it over the IPC channel: one "setup" (where the Edge is, the API key,
// the funded customer and the merchant wallets), then one phase at a time:
//   closed  `concurrency` workers, each with one call in flight, for a warm-up and a window;
//   open    calls started on a fixed schedule (`ratePerSecond`), whatever the answers do, so
//           latency is measured from when a call was due (no coordinated omission).
// Each operation is one of
//   payment  PaymentsService.CreatePayment customer -> merchant with a 1% fee and a fresh
//            Idempotency-Key; counts when it comes back SUCCEEDED and not replayed;
//   retry    the same request under the key of an earlier successful payment; must come back
//            replayed, with that payment's id and status (anything else is an error);
//   refund   PaymentsService.RefundPayment of a quarter of what an earlier payment paid the
//            merchant, once per payment, with a fresh key; must come back SUCCEEDED;
//   pay_in   a PAY_IN to a merchant through the gateway simulator (a payment method it charges);
//            must be accepted (not FAILED); the Router finishes it in the background, and the
//            parent checks how every accepted one ended once the load has stopped;
//   payout   a PAYOUT from a customer to a bank account through the gateway simulator; must be
//            accepted like a pay-in (its money is held meanwhile).
// Every call goes through the generated Connect clients over HTTP/2 (binary) with a deadline.
// The child also keeps the money it saw move (fees, merchant credits, refunds) across phases so
// the parent can compare it with the Ledger at the end. Nothing here loops without an end: every
// phase is bounded by the clock and every call by its deadline.
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import { PaymentKind, PaymentStatus, type CreatePaymentResponse } from "../gen/cowrie/edge/v1/payments_pb.js";
import { BenchCheck, EdgePayments, describeFailure, openLoop, sendToParent, serveLoad, summarize, type LatencySummary } from "./support.js";

export interface SetupMessage {
  type: "setup";
  edgeUrl: string;
  apiKey: string;
  currency: string;
  customers: string[];
  merchants: string[];
  /** HTTP/2 connections the calls are spread over. */
  connections: number;
  /** Deadline on every call. */
  timeoutMs: number;
  /** Share of operations that retry an earlier payment's key (0..1). */
  retryShare: number;
  /** Share of operations that refund part of an earlier payment (0..1). */
  refundShare: number;
  /** Share of operations that are gateway pay-ins to a merchant (0..1). */
  payInShare: number;
  /** Share of operations that are gateway payouts from a customer (0..1). */
  payoutShare: number;
  /** Country of the pay-ins' payers and the payouts' bank accounts. */
  country: string;
  /** Makes idempotency keys unique to this run. */
  runTag: string;
}

export interface PhaseMessage {
  type: "run";
  id: string;
  mode: "closed" | "open";
  warmupSeconds: number;
  seconds: number;
  /** closed: workers. */
  concurrency: number;
  /** open: operations (all kinds) started per second. */
  ratePerSecond: number;
  /** open: most calls in flight; a due call beyond it is not sent and counts as `shed`. */
  maxInFlight: number;
}

/** Money the child saw move since setup (all phases, warm-ups included), in minor units as strings. */
export interface MoneySeen {
  /** Fees of payments that came back SUCCEEDED. */
  feesMinor: string;
  /** amount - fee of payments that came back SUCCEEDED. */
  toMerchantsMinor: string;
  /** Refunds that came back SUCCEEDED. */
  refundedMinor: string;
  /** Calls whose outcome is unknown (transport error, deadline...): the figures above may miss them. */
  unknownOutcomes: number;
}

export interface PhaseResult {
  type: "result";
  id: string;
  mode: "closed" | "open";
  /** Length of the measured window in seconds, as timed by the child. */
  windowSeconds: number;
  /** Operations started in the window (open) or completed in it (closed), all kinds. */
  operations: number;
  /** Fresh payments that came back SUCCEEDED and not replayed. */
  payments: number;
  /** Retries that came back replayed with the right payment. */
  replaysChecked: number;
  refunds: number;
  /** Gateway pay-ins and payouts accepted (their outcome comes later). */
  payIns: number;
  payouts: number;
  /** Failures by code: Connect codes ("deadline_exceeded"...) or this bench's own checks. */
  errors: Record<string, number>;
  firstErrors: string[];
  payment: LatencySummary;
  retry: LatencySummary;
  refund: LatencySummary;
  payIn: LatencySummary;
  payout: LatencySummary;
  /** open: calls not sent because maxInFlight were still running. */
  shed: number;
  /** open: the most calls in flight at once. */
  maxInFlightSeen: number;
  /** CPU time (user + system) the child spent inside the window, in microseconds. */
  clientCpuUs: number;
  money: MoneySeen;
  /** Ids of every gateway payment accepted since setup (all phases and warm-ups). */
  accepted: { payIns: string[]; payouts: string[] };
}

export type ChildMessage =
  | PhaseResult
  | { type: "measure-start" | "measure-end"; id: string }
  | { type: "ready" }
  | { type: "setup-done" }
  | { type: "fatal"; message: string };

type Kind = "payment" | "retry" | "refund" | "pay_in" | "payout";
const KINDS: readonly Kind[] = ["payment", "retry", "refund", "pay_in", "payout"];

interface Paid {
  key: string;
  paymentId: string;
  source: string;
  destination: string;
  amountMinor: bigint;
  feeMinor: bigint;
  reference: string;
}

/** Recent payments a retry may repeat. */
const HISTORY_MAX = 4096;

class Recorder {
  readonly latencies: Record<Kind, number[]> = { payment: [], retry: [], refund: [], pay_in: [], payout: [] };
  readonly errors: Record<string, number> = {};
  readonly firstErrors: string[] = [];
  operations = 0;

  /** Completed operations of `kind`. */
  count(kind: Kind): number {
    return this.latencies[kind].length;
  }

  ok(kind: Kind, latencyMs: number): void {
    this.operations++;
    this.latencies[kind].push(latencyMs);
  }

  error(code: string, detail: string): void {
    this.operations++;
    this.errors[code] = (this.errors[code] ?? 0) + 1;
    if (this.firstErrors.length < 5) this.firstErrors.push(`${code}: ${detail}`);
  }
}

function cpuMicros(): number {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

function send(message: ChildMessage): void {
  sendToParent(message);
}

class Load {
  private readonly edge: EdgePayments;
  private readonly history: Paid[] = [];
  private historyNext = 0;
  /** Payments not refunded yet. */
  private readonly refundable: Paid[] = [];
  private seq = 0;
  private fees = 0n;
  private toMerchants = 0n;
  private refunded = 0n;
  private unknown = 0;
  private readonly accepted = { payIns: [] as string[], payouts: [] as string[] };

  constructor(private readonly setup: SetupMessage) {
    this.edge = new EdgePayments(setup.edgeUrl, setup.connections);
  }

  close(): void {
    this.edge.close();
  }

  money(): MoneySeen {
    return { feesMinor: String(this.fees), toMerchantsMinor: String(this.toMerchants), refundedMinor: String(this.refunded), unknownOutcomes: this.unknown };
  }

  acceptedGatewayPayments(): PhaseResult["accepted"] {
    return { payIns: [...this.accepted.payIns], payouts: [...this.accepted.payouts] };
  }

  private headers(key: string): Record<string, string> {
    return { authorization: `Bearer ${this.setup.apiKey}`, "idempotency-key": key };
  }

  private pick<T>(items: readonly T[]): T {
    return items[Math.floor(Math.random() * items.length)] as T;
  }

  private choose(): Kind {
    const { retryShare, refundShare, payInShare, payoutShare } = this.setup;
    const draw = Math.random();
    if (draw < retryShare) return this.history.length > 0 ? "retry" : "payment";
    if (draw < retryShare + refundShare) return this.refundable.length > 0 ? "refund" : "payment";
    if (draw < retryShare + refundShare + payInShare) return "pay_in";
    if (draw < retryShare + refundShare + payInShare + payoutShare) return "payout";
    return "payment";
  }

  /** One operation; records into `recorder` (when given) with latency from `dueAt`. */
  async operate(recorder: Recorder | undefined, dueAt: number): Promise<void> {
    const kind = this.choose();
    try {
      if (kind === "payment") await this.pay();
      else if (kind === "retry") await this.retry();
      else if (kind === "refund") await this.refund();
      else await this.gatewayPayment(kind);
      recorder?.ok(kind, performance.now() - dueAt);
    } catch (error) {
      const { code, detail, outcomeUnknown } = describeFailure(error);
      if (outcomeUnknown) this.unknown++;
      recorder?.error(`${kind}:${code}`, detail);
    }
  }

  private async pay(): Promise<void> {
    const seq = ++this.seq;
    const amountMinor = 100n + BigInt(Math.floor(Math.random() * 9_900));
    const feeMinor = amountMinor / 100n;
    const request: Omit<Paid, "paymentId"> = {
      key: `${this.setup.runTag}-pay-${seq}`,
      source: this.pick(this.setup.customers),
      destination: this.pick(this.setup.merchants),
      amountMinor,
      feeMinor,
      reference: `bench-${seq}`,
    };
    const response = await this.createPayment(request);
    const payment = response.payment;
    if (!payment) throw new BenchCheck("no_payment", "CreatePayment answered without a payment");
    if (response.replayed) throw new BenchCheck("unexpected_replay", `fresh key ${request.key} came back replayed`);
    if (payment.status !== PaymentStatus.SUCCEEDED) {
      throw new BenchCheck(`status_${PaymentStatus[payment.status] ?? payment.status}${payment.failureCode ? `_${payment.failureCode}` : ""}`, `${payment.id}: ${payment.failureMessage}`);
    }
    this.fees += feeMinor;
    this.toMerchants += amountMinor - feeMinor;
    const paid: Paid = { ...request, paymentId: payment.id };
    if (this.history.length < HISTORY_MAX) this.history.push(paid);
    else this.history[this.historyNext++ % HISTORY_MAX] = paid;
    this.refundable.push(paid);
  }

  private async retry(): Promise<void> {
    const earlier = this.pick(this.history);
    const response = await this.createPayment(earlier);
    const payment = response.payment;
    if (!response.replayed) throw new BenchCheck("replay_not_flagged", `key ${earlier.key} was not answered as a replay`);
    if (!payment || payment.id !== earlier.paymentId || payment.status !== PaymentStatus.SUCCEEDED) {
      throw new BenchCheck("replay_mismatch", `key ${earlier.key}: expected ${earlier.paymentId} SUCCEEDED, got ${payment?.id} ${payment ? PaymentStatus[payment.status] : ""}`);
    }
  }

  private createPayment(request: Omit<Paid, "paymentId">) {
    return this.edge.client().createPayment(
      {
        sourceWalletId: request.source,
        destinationWalletId: request.destination,
        amountMinor: request.amountMinor,
        feeMinor: request.feeMinor,
        currency: this.setup.currency,
        reference: request.reference,
      },
      { timeoutMs: this.setup.timeoutMs, headers: this.headers(request.key) },
    );
  }

  /**
   * A pay-in to a merchant or a payout from a customer through the gateway simulator, with a fresh
   * key (sent as the reference too, so the parent can see that each key made one payment). The
   * Edge answers once the payment is recorded and its work queued; how it ended is checked later.
   */
  private async gatewayPayment(kind: "pay_in" | "payout"): Promise<void> {
    const seq = ++this.seq;
    const key = `${this.setup.runTag}-${kind}-${seq}`;
    const amountMinor = 1_000n + BigInt(Math.floor(Math.random() * 99_000));
    const common = { amountMinor, currency: this.setup.currency, country: this.setup.country, reference: key };
    const request = kind === "pay_in"
      ? { ...common, kind: PaymentKind.PAY_IN, destinationWalletId: this.pick(this.setup.merchants), paymentMethod: `AUTH_bench_${seq}`, customerEmail: `payer-${seq}@example.com` }
      : { ...common, kind: PaymentKind.PAYOUT, sourceWalletId: this.pick(this.setup.customers), bankAccount: { bankCode: "058", accountNumber: "0123456789", accountName: "Bench Payee" } };
    const response: CreatePaymentResponse = await this.edge.client().createPayment(request, { timeoutMs: this.setup.timeoutMs, headers: this.headers(key) });
    const payment = response.payment;
    if (!payment) throw new BenchCheck("no_payment", `${kind} ${key}: CreatePayment answered without a payment`);
    if (response.replayed) throw new BenchCheck("unexpected_replay", `fresh key ${key} came back replayed`);
    if (payment.status === PaymentStatus.FAILED || payment.status === PaymentStatus.CANCELED) {
      throw new BenchCheck(`${kind}_status_${PaymentStatus[payment.status]}${payment.failureCode ? `_${payment.failureCode}` : ""}`, `${payment.id}: ${payment.failureMessage}`);
    }
    (kind === "pay_in" ? this.accepted.payIns : this.accepted.payouts).push(payment.id);
  }

  private async refund(): Promise<void> {
    // Take a random payment out of the pool: each is refunded at most once, so never past its amount.
    const index = Math.floor(Math.random() * this.refundable.length);
    const original = this.refundable[index] as Paid;
    this.refundable[index] = this.refundable[this.refundable.length - 1] as Paid;
    this.refundable.pop();
    const amountMinor = (original.amountMinor - original.feeMinor) / 4n;
    const response = await this.edge.client().refundPayment(
      { paymentId: original.paymentId, amountMinor, reason: "bench partial refund" },
      { timeoutMs: this.setup.timeoutMs, headers: this.headers(`${this.setup.runTag}-refund-${++this.seq}`) },
    );
    const refund = response.refund;
    if (!refund || response.replayed) throw new BenchCheck("refund_mismatch", `refund of ${original.paymentId}: ${refund?.id} replayed=${response.replayed}`);
    if (refund.status !== PaymentStatus.SUCCEEDED) {
      throw new BenchCheck(`refund_status_${PaymentStatus[refund.status] ?? refund.status}${refund.failureCode ? `_${refund.failureCode}` : ""}`, `${refund.id}: ${refund.failureMessage}`);
    }
    this.refunded += amountMinor;
  }
}

async function runClosed(load: Load, message: PhaseMessage): Promise<PhaseResult> {
  const startMs = performance.now();
  const measureStartMs = startMs + message.warmupSeconds * 1000;
  const measureEndMs = measureStartMs + message.seconds * 1000;
  const recorder = new Recorder();
  const window = windowMarks(message.id, measureStartMs, measureEndMs);
  const worker = async (): Promise<void> => {
    while (performance.now() < measureEndMs) {
      const sentAt = performance.now();
      // Classified by completion time: only calls that complete inside the window count.
      const scratch = new Recorder();
      await load.operate(scratch, sentAt);
      const doneAt = performance.now();
      if (doneAt >= measureStartMs && doneAt <= measureEndMs) merge(recorder, scratch);
    }
  };
  try {
    await Promise.all(Array.from({ length: message.concurrency }, () => worker()));
  } finally {
    window.clear();
  }
  return result(message, recorder, window.finish(), 0, message.concurrency, load);
}

async function runOpen(load: Load, message: PhaseMessage): Promise<PhaseResult> {
  const startMs = performance.now();
  const measureStartMs = startMs + message.warmupSeconds * 1000;
  const measureEndMs = measureStartMs + message.seconds * 1000;
  const recorder = new Recorder();
  const window = windowMarks(message.id, measureStartMs, measureEndMs);
  let shed = 0;
  // Only calls due in the window count; the warm-up's run unrecorded.
  const loop = await openLoop(
    { startMs, endMs: measureEndMs, intervalMs: 1000 / message.ratePerSecond, maxInFlight: message.maxInFlight },
    (dueAt) => load.operate(dueAt >= measureStartMs ? recorder : undefined, dueAt),
    (dueAt) => {
      if (dueAt < measureStartMs) return;
      shed++;
      recorder.error("shed", `more than ${message.maxInFlight} calls in flight`);
    },
  );
  // The calls started in the window finish (each is bounded by its deadline).
  await loop.running;
  window.clear();
  return result(message, recorder, window.finish(), shed, loop.maxInFlightSeen, load);
}

function merge(into: Recorder, from: Recorder): void {
  into.operations += from.operations;
  for (const kind of KINDS) into.latencies[kind].push(...from.latencies[kind]);
  for (const [code, count] of Object.entries(from.errors)) into.errors[code] = (into.errors[code] ?? 0) + count;
  for (const line of from.firstErrors) if (into.firstErrors.length < 5) into.firstErrors.push(line);
}

/** Timers that mark the window's start and end (so the parent samples its counters then). */
function windowMarks(id: string, measureStartMs: number, measureEndMs: number) {
  let windowStartMs = measureStartMs;
  let windowEndMs = measureEndMs;
  let cpuAtStart = cpuMicros();
  let cpuAtEnd = 0;
  const startTimer = setTimeout(() => {
    windowStartMs = performance.now();
    cpuAtStart = cpuMicros();
    send({ type: "measure-start", id });
  }, Math.max(0, measureStartMs - performance.now()));
  const endTimer = setTimeout(() => {
    windowEndMs = performance.now();
    cpuAtEnd = cpuMicros();
    send({ type: "measure-end", id });
  }, Math.max(0, measureEndMs - performance.now()));
  return {
    clear() {
      clearTimeout(startTimer);
      clearTimeout(endTimer);
    },
    finish(): { windowSeconds: number; clientCpuUs: number } {
      if (cpuAtEnd === 0) {
        windowEndMs = performance.now();
        cpuAtEnd = cpuMicros();
        send({ type: "measure-end", id });
      }
      return { windowSeconds: (windowEndMs - windowStartMs) / 1000, clientCpuUs: cpuAtEnd - cpuAtStart };
    },
  };
}

function result(
  message: PhaseMessage,
  recorder: Recorder,
  window: { windowSeconds: number; clientCpuUs: number },
  shed: number,
  maxInFlightSeen: number,
  load: Load,
): PhaseResult {
  return {
    type: "result",
    id: message.id,
    mode: message.mode,
    windowSeconds: window.windowSeconds,
    operations: recorder.operations,
    payments: recorder.count("payment"),
    replaysChecked: recorder.count("retry"),
    refunds: recorder.count("refund"),
    payIns: recorder.count("pay_in"),
    payouts: recorder.count("payout"),
    errors: recorder.errors,
    firstErrors: recorder.firstErrors,
    payment: summarize(recorder.latencies.payment),
    retry: summarize(recorder.latencies.retry),
    refund: summarize(recorder.latencies.refund),
    payIn: summarize(recorder.latencies.pay_in),
    payout: summarize(recorder.latencies.payout),
    shed,
    maxInFlightSeen,
    clientCpuUs: window.clientCpuUs,
    money: load.money(),
    accepted: load.acceptedGatewayPayments(),
  };
}

function main(): void {
  serveLoad<SetupMessage, PhaseMessage, Load>(
    "bench/mesh-load.ts is started by bench/mesh.ts (npm run bench), not directly",
    (setup) => new Load(setup),
    (load, message) => (message.type !== "run" ? undefined : message.mode === "closed" ? runClosed(load, message) : runOpen(load, message)),
  );
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
