// The clients of a chaos run (bench/chaos.ts): concurrent loops, each making random payments
// through the public Edge with a fresh Idempotency-Key per operation: internal payments between
// wallets (with a fee), PAY_INs and PAYOUTs through the gateway simulator (some forced to decline,
// to stay pending for a while, or to time out after the gateway acted). A call whose outcome is
// unknown (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, ...) is retried with the SAME key until it
// gets a definite answer or the run gives up on it; a gateway payment accepted as CREATED is
// polled with GetPayment until it is final. Every answer the client was told is kept, for the
// checks (bench/chaos-checks.ts) to hold the mesh to.
import { Code, ConnectError } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { PaymentKind, PaymentStatus, type CreatePaymentRequest, type Payment } from "../gen/cowrie/edge/v1/payments_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { CreatePaymentRequestSchema } from "../gen/cowrie/edge/v1/payments_pb.js";
import { backoffMs, pause } from "../services/runtime/pause.js";
import type { BenchTenant } from "./support.js";
import { seededRandom } from "../services/simulator/core.js";

export type OpKind = "internal" | "pay_in" | "payout" | "refund";

/** A wallet of the run and what it holds a currency in. */
export interface ChaosWallet {
  id: string;
  currency: string;
  merchant: boolean;
}

export interface Op {
  key: string;
  client: number;
  kind: OpKind;
  currency: string;
  amountMinor: bigint;
  feeMinor: bigint;
  sourceWalletId: string;
  destinationWalletId: string;
  /** The trigger sent to the simulator (payment method or account number). */
  trigger: string;
  /** Refunds: the payment refunded (an internal payment or a pay-in the client saw SUCCEEDED). */
  refundOf?: string;
  startedAtMs: number;
  attempts: number;
  /** Codes of the attempts that had an unknown outcome and were retried. */
  retried: Record<string, number>;
  /** ok: told a payment; error: told a definite error; indeterminate: never told anything definite. */
  outcome: "ok" | "error" | "indeterminate" | "running";
  errorCode?: string;
  errorMessage?: string;
  paymentId?: string;
  /** The status in the first answer. */
  toldStatus?: string;
  /** The first final status the client saw (in the answer, or polling). */
  toldFinal?: string;
  /** Later answers (replays, polls) that contradicted an earlier one. */
  contradictions: string[];
  replayChecked: boolean;
}

/** Codes whose outcome is unknown: the same key is sent again. */
const RETRYABLE = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Aborted, Code.Unknown, Code.Internal, Code.ResourceExhausted, Code.Canceled]);
const FINAL = new Set([PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED]);

export const statusName = (status: PaymentStatus): string => PaymentStatus[status] ?? String(status);

export interface WorkloadOptions {
  tenant: BenchTenant;
  wallets: readonly ChaosWallet[];
  clients: number;
  seed: number;
  runTag: string;
  callTimeoutMs: number;
  /** New operations start while this returns true. */
  keepGoing: () => boolean;
  /** After this time an operation stops retrying (indeterminate) or polling. */
  giveUpAtMs: () => number;
  /** Share of operations whose key is sent once more after the answer, which must replay it. */
  replayShare: number;
}

const COUNTRY: Record<string, string> = { NGN: "NG", USD: "US" };

export class Workload {
  readonly ops: Op[] = [];
  #sequence = 0;
  /** Payments the clients saw SUCCEEDED that may be refunded, by currency. */
  readonly #refundable = new Map<string, Op[]>();

  constructor(private readonly options: WorkloadOptions) {}

  /** Runs the clients until keepGoing() says no and every operation has ended. */
  async run(): Promise<void> {
    await Promise.all(Array.from({ length: this.options.clients }, (_, client) => this.#client(client)));
  }

  async #client(client: number): Promise<void> {
    const random = seededRandom(this.options.seed * 1000 + client + 1);
    while (this.options.keepGoing()) {
      const op = this.#nextOp(client, random);
      this.ops.push(op);
      await this.#execute(op, random);
      // A little think time keeps the offered load moderate: the faults, not the load, are the test.
      await pause(20 + Math.floor(random() * 80));
    }
  }

  #nextOp(client: number, random: () => number): Op {
    const { wallets, runTag } = this.options;
    const currency = random() < 0.7 ? "NGN" : "USD";
    const pool = wallets.filter((wallet) => wallet.currency === currency);
    const pick = (): ChaosWallet => pool[Math.floor(random() * pool.length)] as ChaosWallet;
    const roll = random();
    const refundable = this.#refundable.get(currency) ?? [];
    let kind: OpKind = roll < 0.45 ? "internal" : roll < 0.67 ? "pay_in" : roll < 0.89 ? "payout" : "refund";
    if (kind === "refund" && refundable.length === 0) kind = "internal";
    const key = `${runTag}-c${client}-${this.#sequence++}`;
    const base = { key, client, kind, currency, startedAtMs: Date.now(), attempts: 0, retried: {}, outcome: "running" as const, contradictions: [], replayChecked: false };
    if (kind === "refund") {
      // Part of a recent payment: now and then more than is left, which must be refused.
      const parent = refundable[Math.max(0, refundable.length - 1 - Math.floor(random() * Math.min(refundable.length, 50)))] as Op;
      const amountMinor = 1n + BigInt(Math.floor(random() * Number(parent.amountMinor / 2n)));
      return { ...base, amountMinor, feeMinor: 0n, sourceWalletId: parent.destinationWalletId, destinationWalletId: parent.sourceWalletId, trigger: "", refundOf: parent.paymentId };
    }
    if (kind === "internal") {
      const source = pick();
      let destination = pick();
      while (destination.id === source.id) destination = pick();
      const amountMinor = BigInt(500 + Math.floor(random() * 19_500));
      return { ...base, amountMinor, feeMinor: amountMinor / 100n, sourceWalletId: source.id, destinationWalletId: destination.id, trigger: "" };
    }
    const amountMinor = BigInt(1000 + Math.floor(random() * 29_000));
    const triggerRoll = random();
    if (kind === "pay_in") {
      const trigger = triggerRoll < 0.08 ? "decline_insufficient_funds" : triggerRoll < 0.12 ? "pending" : triggerRoll < 0.15 ? "ambiguous" : `AUTH_chaos_${client}`;
      return { ...base, amountMinor, feeMinor: 0n, sourceWalletId: "", destinationWalletId: pick().id, trigger };
    }
    const trigger = triggerRoll < 0.06 ? "DECLINEINVALIDACCOUNT" : triggerRoll < 0.09 ? "ambiguous" : "0123456789";
    return { ...base, amountMinor, feeMinor: 0n, sourceWalletId: pick().id, destinationWalletId: "", trigger };
  }

  #request(op: Op): MessageInitShape<typeof CreatePaymentRequestSchema> {
    const common = { amountMinor: op.amountMinor, currency: op.currency, reference: op.key };
    switch (op.kind) {
      case "internal":
        return { ...common, kind: PaymentKind.INTERNAL, sourceWalletId: op.sourceWalletId, destinationWalletId: op.destinationWalletId, feeMinor: op.feeMinor, userId: `u-${op.sourceWalletId}` };
      case "pay_in":
        return {
          ...common,
          kind: PaymentKind.PAY_IN,
          destinationWalletId: op.destinationWalletId,
          paymentMethod: op.trigger,
          customerEmail: `payer${op.client}@example.com`,
          country: COUNTRY[op.currency] ?? "NG",
        };
      case "payout":
      case "refund":
        return {
          ...common,
          kind: PaymentKind.PAYOUT,
          sourceWalletId: op.sourceWalletId,
          country: COUNTRY[op.currency] ?? "NG",
          bankAccount: { bankCode: "058", accountNumber: op.trigger, accountName: "Chaos Payee" },
          userId: `u-${op.sourceWalletId}`,
        };
    }
  }

  /** One CreatePayment (RefundPayment for a refund), retried with the same key while its outcome is unknown. */
  async #create(op: Op, random: () => number): Promise<{ payment: Payment; replayed: boolean } | { error: ConnectError } | undefined> {
    const { tenant, callTimeoutMs } = this.options;
    const request = op.kind === "refund" ? undefined : (this.#request(op) as CreatePaymentRequest);
    for (let attempt = 0; ; attempt++) {
      if (Date.now() > this.options.giveUpAtMs()) return undefined;
      op.attempts++;
      try {
        const options = { headers: tenant.auth(op.key), timeoutMs: callTimeoutMs };
        const response = request
          ? await tenant.payments.createPayment(request, options)
          : await tenant.payments.refundPayment({ paymentId: op.refundOf, amountMinor: op.amountMinor, reason: op.key }, options).then((answer) => ({ payment: answer.refund, replayed: answer.replayed }));
        if (!response.payment) return { error: new ConnectError("the answer has no payment", Code.Internal) };
        return { payment: response.payment, replayed: response.replayed };
      } catch (error) {
        const connectError = ConnectError.from(error);
        if (!RETRYABLE.has(connectError.code)) return { error: connectError };
        const code = codeToString(connectError.code);
        op.retried[code] = (op.retried[code] ?? 0) + 1;
        await pause(backoffMs(attempt, 100, 2_000, "equal", random));
      }
    }
  }

  async #execute(op: Op, random: () => number): Promise<void> {
    const answer = await this.#create(op, random);
    if (answer === undefined) {
      op.outcome = "indeterminate";
      return;
    }
    if ("error" in answer) {
      op.outcome = "error";
      op.errorCode = codeToString(answer.error.code);
      op.errorMessage = answer.error.rawMessage;
      return;
    }
    op.outcome = "ok";
    op.paymentId = answer.payment.id;
    op.toldStatus = statusName(answer.payment.status);
    if (FINAL.has(answer.payment.status)) op.toldFinal = op.toldStatus;
    // Gateway payments answer CREATED at once; an internal one whose Wallet call had an unknown
    // outcome answers PROCESSING. Either way the client asks until it is final.
    if (op.toldFinal === undefined) await this.#poll(op, random);
    if (op.toldFinal === "SUCCEEDED" && (op.kind === "internal" || op.kind === "pay_in")) {
      const list = this.#refundable.get(op.currency) ?? [];
      list.push(op);
      this.#refundable.set(op.currency, list);
    }
    if (random() < this.options.replayShare) await this.#replay(op, random);
  }

  /**
   * GetPayment until the payment is final (or the run gives up polling). The give-up time is read
   * on every round: it is set when the faults end, often while a poll is already running, and a
   * poll that kept its own 60 s kept a CI chaos round past its time limit before the run could
   * report what had not quiesced.
   */
  async #poll(op: Op, random: () => number): Promise<void> {
    const { tenant, callTimeoutMs } = this.options;
    const pollUntilMs = Date.now() + 60_000;
    while (Date.now() < Math.min(this.options.giveUpAtMs(), pollUntilMs)) {
      await pause(300 + Math.floor(random() * 400));
      try {
        const { payment } = await tenant.payments.getPayment({ paymentId: op.paymentId }, { headers: { authorization: `Bearer ${tenant.apiKey}` }, timeoutMs: callTimeoutMs });
        if (!payment) continue;
        if (FINAL.has(payment.status)) {
          op.toldFinal = statusName(payment.status);
          return;
        }
      } catch (error) {
        const connectError = ConnectError.from(error);
        if (connectError.code === Code.NotFound) op.contradictions.push(`GetPayment: NOT_FOUND for an acknowledged payment`);
      }
    }
  }

  /** Sends the key once more: it must come back replayed, as the same payment. */
  async #replay(op: Op, random: () => number): Promise<void> {
    const answer = await this.#create(op, random);
    if (answer === undefined) return;
    op.replayChecked = true;
    if ("error" in answer) {
      op.contradictions.push(`replay answered ${codeToString(answer.error.code)}: ${answer.error.rawMessage}`);
      return;
    }
    if (answer.payment.id !== op.paymentId) op.contradictions.push(`replay answered payment ${answer.payment.id}, first ${op.paymentId}`);
    if (!answer.replayed) op.contradictions.push("replay not flagged replayed");
    const status = answer.payment.status;
    // A replay repeats the first answer: an internal payment's final status, a gateway payment's CREATED.
    if ((op.kind === "internal" || (op.kind === "refund" && op.destinationWalletId !== "")) && statusName(status) !== op.toldStatus) op.contradictions.push(`replay answered ${statusName(status)}, first ${op.toldStatus}`);
  }

  /** Operations by kind and outcome: succeeded, failed, accepted (not seen final), error:<code>, indeterminate. */
  summary(): Record<string, Record<string, number>> {
    const byKind: Record<string, Record<string, number>> = {};
    for (const op of this.ops) {
      const label =
        op.outcome === "ok" ? (op.toldFinal ?? `not_seen_final:${op.toldStatus}`).toLowerCase() : op.outcome === "error" ? `error:${op.errorCode}` : op.outcome;
      const kind = (byKind[op.kind] ??= {});
      kind[label] = (kind[label] ?? 0) + 1;
    }
    return byKind;
  }

  /** Attempts retried after an unknown outcome, by code. */
  retries(): Record<string, number> {
    const total: Record<string, number> = {};
    for (const op of this.ops) for (const [code, count] of Object.entries(op.retried)) total[code] = (total[code] ?? 0) + count;
    return total;
  }
}
