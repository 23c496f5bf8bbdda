// Drives a gateway payment (PAY_IN, PAYOUT, a refund of a PAY_IN) to its final state. Every step
// leaves a recovery point in PostgreSQL, so whoever drives the payment next (a worker, the
// completer after a crash, the resolver) continues from what is recorded:
//
//   1. an answer already recorded (succeeded, declined) is booked: the Wallet credit of a pay-in,
//      the capture or release of a payout's hold;
//   2. a gateway that may have acted (a call recorded "sent" with no answer, a timeout, a pending
//      status) is asked for its status before anything else is sent anywhere;
//   3. otherwise the router picks a gateway, the payout's money is held, the call is recorded
//      "sent" and made; retries stay on the same gateway with the same reference (which the
//      gateway deduplicates); another gateway is tried only after an answer that proves the
//      request was not processed, so two gateways can never both charge one payment.
//
// An ambiguous answer that status cannot settle moves the payment to OUTCOME_UNKNOWN: its money
// stays held, and the resolver asks the gateway again with backoff until it answers.
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { PaymentKind, PaymentStatus } from "../../gen/cowrie/router/v1/router_pb.js";
import { EntryType, WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import type { Db } from "../runtime/db.js";
import type { Logger } from "../runtime/log.js";
import { backoffMs, pause } from "../runtime/pause.js";
import type { GatewayName, GatewayResult, Operation } from "./gateways/connector.js";
import { declineCode, releaseQuietly } from "./processor.js";
import { riskOutcome, type RiskCheck } from "./risk.js";
import type { GatewayPool, RoutingDecision } from "./routing.js";
import type { Instrument } from "./schema.js";
import {
  findById,
  gatewayCallsOf,
  persistTransition,
  recordCallResult,
  recordSentCall,
  rescheduleCheck,
  setHold,
  setRisk,
  type GatewayCallRow,
  type OutcomeFields,
  type PaymentRow,
} from "./store.js";

export interface GatewayFlowOptions {
  /** Longest one gateway call may take. */
  callTimeoutMs: number;
  /** Retries of a retryable error on the same gateway. */
  retries: number;
  /** After this long unknown, a payment is flagged for reconciliation. */
  flagAfterMs: number;
  /** How long a payment may wait for a gateway able to take it before it fails. */
  patienceMs: number;
}

/** Where a drive left a gateway payment. */
export interface FlowResult {
  payment: PaymentRow;
  /** No gateway can take the payment now; drive it again after this long. */
  deferMs?: number;
}

/**
 * How long after an ambiguous call a gateway's "no such reference" is believed: a request still
 * in flight could otherwise be recorded after the answer, and failing over then would charge twice.
 */
const AMBIGUITY_GRACE_FACTOR = 2;
const RETRY_BACKOFF_BASE_MS = 100;
const RETRY_BACKOFF_CAP_MS = 2_000;
const CHECK_BACKOFF_BASE_MS = 1_000;
const CHECK_BACKOFF_CAP_MS = 5 * 60_000;
const DEFER_MS = 1_000;
/** Most gateway calls (sends and status queries) one drive makes. */
const CALLS_PER_DRIVE_MAX = 8;

/** The reference Cowrie sends a gateway for a payment: one per payment and gateway. */
export function gatewayReference(paymentId: string, gateway: string): string {
  // Paystack allows only letters, digits, "-", "." and "=" in references.
  return `${paymentId.replace(/_/g, "-")}.${gateway}`;
}

/** The payment a reference Cowrie sent belongs to, or undefined when it is not one of ours. */
export function paymentIdOfReference(reference: string): string | undefined {
  const match = /^pay-([0-9A-Z]{26})\.[a-z]+$/.exec(reference);
  return match ? `pay_${match[1]}` : undefined;
}

/** The gateway operation a gateway payment is. */
export function operationOf(payment: PaymentRow): Operation {
  if (payment.kind === PaymentKind.PAY_IN) return "charge";
  if (payment.kind === PaymentKind.PAYOUT) return "payout";
  return "refund";
}

function holdsMoney(payment: PaymentRow): boolean {
  return payment.kind !== PaymentKind.PAY_IN;
}



export class GatewayFlow {
  constructor(
    private readonly db: Db,
    private readonly pool: GatewayPool,
    private readonly wallets: Client<typeof WalletService>,
    private readonly options: GatewayFlowOptions,
    private readonly risk: RiskCheck,
    private readonly log: Logger,
  ) {}

  /** Drives a CREATED, PROCESSING or (for the resolver) OUTCOME_UNKNOWN gateway payment. */
  async drive(start: PaymentRow, reason: string, signal?: AbortSignal): Promise<FlowResult> {
    let payment = start;
    if (payment.status === PaymentStatus.CREATED) {
      payment = await this.move(payment, PaymentStatus.PROCESSING, reason, {});
    }
    if (payment.status === PaymentStatus.OUTCOME_UNKNOWN) return this.resolve(payment, reason, signal);
    if (payment.status !== PaymentStatus.PROCESSING) return { payment };
    return this.process(payment, await gatewayCallsOf(this.db, payment.id), signal);
  }

  private async process(payment: PaymentRow, calls: GatewayCallRow[], signal?: AbortSignal): Promise<FlowResult> {
    // 1. An answer already recorded decides.
    const decided = calls.findLast(isFinalAnswer);
    if (decided) return this.settle(payment, decided.gateway as GatewayName, decided);

    // 2. A gateway that may have acted is asked first.
    const open = openQuestion(calls);
    let budget = CALLS_PER_DRIVE_MAX;
    if (open) {
      budget--;
      const answer = await this.ask(payment, open.gateway as GatewayName, "status after an unanswered call", signal);
      if (answer.outcome === "succeeded" || answer.outcome === "declined") return this.settle(payment, open.gateway as GatewayName, answer);
      if (answer.outcome !== "not_found" || Date.now() - open.at.getTime() < this.graceMs()) return this.toUnknown(payment, answer);
    }

    // 3. Risk, once, before the first call: a block fails the payment, a review parks it (with a
    // payout's money held for the gateway it will go to).
    const excluded = new Map<GatewayName, string>();
    const refundOf = payment.kind === PaymentKind.REFUND ? await findById(this.db, payment.refundedPaymentId ?? "") : undefined;
    if (payment.riskDecision === "" && payment.kind !== PaymentKind.REFUND) {
      const { fields, stop } = riskOutcome(await this.risk.evaluate(payment, signal));
      if (stop?.to === PaymentStatus.IN_REVIEW) {
        const gateway = this.route(payment, refundOf, excluded).choice;
        if (holdsMoney(payment) && gateway) {
          const held = await this.hold(payment, gateway);
          if ("failed" in held) return held.failed;
          payment = held.payment;
        }
      }
      if (stop) return { payment: await this.move(payment, stop.to, stop.reason, stop.fields) };
      payment = await setRisk(this.db, payment, fields);
    }

    // 4. Route and send.
    while (budget > 0 && !signal?.aborted) {
      const decision = this.route(payment, refundOf, excluded);
      const gateway = decision.choice;
      if (!gateway) return this.defer(payment, decision.reason);
      if (this.callTimeoutMs(payment) === 0) return this.defer(payment, "its time ran out before a gateway took it");
      if (holdsMoney(payment)) {
        const held = await this.hold(payment, gateway);
        if ("failed" in held) return held.failed;
        payment = held.payment;
      }
      for (let retry = 0; budget > 0; retry++) {
        budget--;
        const sent = await this.send(payment, gateway, refundOf, retry === 0 ? decision : undefined, retry === 0 ? decision.reason : `retry ${retry}`, signal);
        const result = sent.result;
        if (isFinalAnswer(sent.call)) return this.settle(payment, gateway, sent.call);
        if (result.action === "failover") {
          excluded.set(gateway, `failed over after ${result.code}`);
          break;
        }
        if (result.action === "retry" && retry < this.options.retries && this.pool.tryRetry(gateway)) {
          await pause(result.retryAfterMs ?? backoffMs(retry, RETRY_BACKOFF_BASE_MS, RETRY_BACKOFF_CAP_MS), signal);
          continue;
        }
        if (result.code === "rate_limited") {
          // Refused before processing, again and again: the gateway did nothing; try another.
          excluded.set(gateway, "failed over after repeated rate limiting");
          break;
        }
        // Ambiguous, or retries spent on an error that may have been processed: ask.
        budget--;
        const answer = await this.ask(payment, gateway, `status after ${result.code}`, signal);
        if (answer.outcome === "succeeded" || answer.outcome === "declined") return this.settle(payment, gateway, answer);
        if (answer.outcome === "not_found" && result.action === "retry") {
          excluded.set(gateway, `failed over after repeated ${result.code}`);
          break;
        }
        return this.toUnknown(payment, answer);
      }
    }
    return this.defer(payment, "no gateway took the payment in this drive");
  }

  /**
   * No gateway can take the payment now (all open, all failed over): wait, or past the patience
   * give up. Giving up is safe: every gateway tried answered in a way that proves it did nothing.
   */
  private async defer(payment: PaymentRow, reason: string): Promise<FlowResult> {
    if (Date.now() - payment.createdAt.getTime() < this.options.patienceMs) return { payment, deferMs: DEFER_MS };
    if (payment.holdId !== "") await this.releaseHold(payment);
    const failureMessage = `no gateway could take the payment within ${this.options.patienceMs} ms: ${reason}`;
    return { payment: await this.move(payment, PaymentStatus.FAILED, "no_gateway_available", { failureCode: "no_gateway_available", failureMessage }) };
  }

  /** The resolver's step for an OUTCOME_UNKNOWN payment: ask its gateway once. */
  private async resolve(payment: PaymentRow, driver: string, signal?: AbortSignal): Promise<FlowResult> {
    const gateway = payment.gateway as GatewayName;
    const calls = await gatewayCallsOf(this.db, payment.id);
    const lastSent = calls.findLast((call) => call.operation !== "status");
    const answer = await this.ask(payment, gateway, driver === "webhook" ? "status after a gateway webhook" : "resolver", signal);
    if (answer.outcome === "succeeded" || answer.outcome === "declined") return this.settle(payment, gateway, answer);
    if (answer.outcome === "not_found" && (!lastSent || Date.now() - lastSent.at.getTime() >= this.graceMs())) {
      // The gateway never had it: the money is still ours to route again.
      const again = await this.move(payment, PaymentStatus.PROCESSING, "gateway has no record; routing again", {});
      return this.process(again, await gatewayCallsOf(this.db, payment.id), signal);
    }
    // Unknown since the money call whose answer never came (every check since is a status call).
    const unknownSince = lastSent?.at ?? payment.updatedAt;
    const flag = payment.needsReconciliation || Date.now() - unknownSince.getTime() >= this.options.flagAfterMs;
    if (flag && !payment.needsReconciliation) {
      this.log.error({ paymentId: payment.id, gateway }, "gateway outcome still unknown past the limit; flagged for reconciliation");
    }
    const next = new Date(Date.now() + backoffMs(payment.checks + 1, CHECK_BACKOFF_BASE_MS, CHECK_BACKOFF_CAP_MS, "equal"));
    await rescheduleCheck(this.db, payment, next, flag);
    return { payment: { ...payment, nextCheckAt: next, needsReconciliation: flag } };
  }

  /**
   * The payment's budget flows into its gateway calls: no call may outlive the patience the
   * payment was given (a connector with no time left answers "not sent" without sending).
   */
  private callTimeoutMs(payment: PaymentRow): number {
    const leftMs = payment.createdAt.getTime() + this.options.patienceMs - Date.now();
    return Math.max(0, Math.min(this.options.callTimeoutMs, leftMs));
  }

  private graceMs(): number {
    return AMBIGUITY_GRACE_FACTOR * this.options.callTimeoutMs;
  }

  private route(payment: PaymentRow, refundOf: PaymentRow | undefined, excluded: Map<GatewayName, string>): RoutingDecision {
    const instrument = (payment.instrument ?? refundOf?.instrument ?? { country: "" }) as Instrument;
    const decision = this.pool.decide({ currency: payment.currency, country: instrument.country, amountMinor: payment.amountMinor }, excluded);
    // Money already held for a gateway stays with it while it can take the payment (a re-drive
    // after a crash must not move the hold for a mere change in ranking).
    const heldFor = holdsMoney(payment) && payment.gateway !== "" ? decision.candidates.find((item) => item.gateway === payment.gateway) : undefined;
    if (!refundOf && heldFor?.eligible) return { candidates: decision.candidates, choice: heldFor.gateway, reason: "the money is held for this gateway" };
    if (!refundOf) return decision;
    // A refund goes back through the gateway that took the payment, or nowhere.
    const taker = refundOf.gateway as GatewayName;
    const candidate = decision.candidates.find((item) => item.gateway === taker);
    return candidate?.eligible
      ? { candidates: decision.candidates, choice: taker, reason: "refund goes back through the gateway that took the payment" }
      : { candidates: decision.candidates, reason: `the gateway that took the payment cannot take the refund now (${candidate?.excludedReason ?? "unknown"})` };
  }

  /** Makes sure the payout's money is held for `gateway`, moving the hold from another gateway. */
  private async hold(payment: PaymentRow, gateway: GatewayName): Promise<{ payment: PaymentRow } | { failed: FlowResult }> {
    if (payment.holdId !== "" && payment.gateway === gateway) return { payment };
    // Only reached after the previous gateway proved it did not process the request. Its hold
    // goes first, even one a crash kept from being recorded (asking the Wallet for that hold
    // again under its key returns it).
    if (payment.gateway !== "" && payment.gateway !== gateway) {
      const previous = payment.holdId !== "" ? payment.holdId : await this.placeHold(payment, payment.gateway as GatewayName).then((id) => id, () => "");
      if (previous !== "") await this.releaseHold({ ...payment, holdId: previous });
    }
    // The intent first: a crash after the Wallet placed the hold leaves the gateway it is for.
    await setHold(this.db, payment.id, "", gateway);
    try {
      const holdId = await this.placeHold(payment, gateway);
      await setHold(this.db, payment.id, holdId, gateway);
      return { payment: { ...payment, holdId, gateway } };
    } catch (error) {
      const refusal = ConnectError.from(error);
      const failureCode = declineCode(refusal);
      if (failureCode === undefined) throw refusal;
      // Nothing was sent to any gateway: the wallet could not pay (funds, frozen, limits).
      return { failed: { payment: await this.move(payment, PaymentStatus.FAILED, failureCode, { failureCode, failureMessage: refusal.rawMessage }) } };
    }
  }

  /** The hold reserving the payment's money for `gateway`: one per payment and gateway. */
  private async placeHold(payment: PaymentRow, gateway: GatewayName): Promise<string> {
    const { hold } = await this.wallets.placeHold({
      tenantId: payment.tenantId,
      walletId: payment.sourceWalletId,
      amountMinor: payment.amountMinor,
      currency: payment.currency,
      idempotencyKey: `router:${payment.id}:hold:${gateway}`,
      gateway,
      captureType: payment.kind === PaymentKind.REFUND ? EntryType.REFUND : EntryType.PAYOUT,
      reference: payment.reference,
    });
    if (!hold) throw new ConnectError(`wallet placed no hold for payment ${payment.id}`, Code.Internal);
    return hold.id;
  }

  private async send(payment: PaymentRow, gateway: GatewayName, refundOf: PaymentRow | undefined, decision: RoutingDecision | undefined, reason: string, signal?: AbortSignal) {
    const operation = operationOf(payment);
    const reference = gatewayReference(payment.id, gateway);
    const call = await recordSentCall(this.db, { paymentId: payment.id, gateway, operation, reference, candidates: decision?.candidates ?? null, reason });
    const { result, latencyMs } = await this.pool.call(gateway, operation, (connector, options) => {
      const instrument = (payment.instrument ?? { country: "" }) as Instrument;
      switch (operation) {
        case "charge":
          return connector.charge({
            reference,
            amountMinor: payment.amountMinor,
            currency: payment.currency,
            paymentMethod: instrument.paymentMethod ?? "",
            customerEmail: instrument.customerEmail ?? "",
            description: payment.reference,
          }, options);
        case "payout":
          return connector.payout({
            reference,
            amountMinor: payment.amountMinor,
            currency: payment.currency,
            bankAccount: { bankCode: "", accountNumber: "", accountName: "", ...instrument.bankAccount, country: instrument.country },
            description: payment.reference,
          }, options);
        case "refund":
          return connector.refund({
            reference,
            chargeReference: gatewayReference(refundOf?.id ?? "", gateway),
            chargeGatewayId: refundOf?.gatewayTransactionId || undefined,
            amountMinor: payment.amountMinor,
            currency: payment.currency,
          }, options);
      }
    }, { timeoutMs: this.callTimeoutMs(payment), signal, firstAttempt: decision !== undefined });
    return { result, call: await recordCallResult(this.db, call, resultRow(result, latencyMs)) };
  }

  /** Asks `gateway` for the status of the payment's request there, recording the question and answer. */
  private async ask(payment: PaymentRow, gateway: GatewayName, reason: string, signal?: AbortSignal): Promise<GatewayCallRow> {
    const reference = gatewayReference(payment.id, gateway);
    const call = await recordSentCall(this.db, { paymentId: payment.id, gateway, operation: "status", reference, candidates: null, reason });
    // A status query is never cut by the payment's budget: it only learns what already happened.
    const { result, latencyMs } = await this.pool.call(gateway, "status", (connector, options) => connector.status(operationOf(payment), reference, options), {
      timeoutMs: this.options.callTimeoutMs,
      signal,
    });
    return recordCallResult(this.db, call, resultRow(result, latencyMs));
  }

  /** Books a final gateway answer in the Wallet and records the payment's final state. */
  private async settle(payment: PaymentRow, gateway: GatewayName, answer: GatewayCallRow): Promise<FlowResult> {
    const gatewayFields: OutcomeFields = { gateway, gatewayTransactionId: answer.gatewayTransactionId || payment.gatewayTransactionId };
    // Money is booked only on the gateway's explicit success; every other final answer fails it.
    if (answer.outcome !== "succeeded") {
      if (payment.holdId !== "") await this.releaseHold(payment);
      return {
        payment: await this.move(payment, PaymentStatus.FAILED, answer.code, { ...gatewayFields, failureCode: answer.code, failureMessage: answer.message }),
      };
    }
    try {
      let transferId: string;
      if (payment.kind === PaymentKind.PAY_IN) {
        const credited = await this.wallets.fundWallet({
          tenantId: payment.tenantId,
          walletId: payment.destinationWalletId,
          amountMinor: payment.amountMinor,
          currency: payment.currency,
          idempotencyKey: `router:${payment.id}`,
          gateway,
        });
        transferId = credited.transferId;
      } else {
        await this.wallets.captureHold({ tenantId: payment.tenantId, holdId: payment.holdId });
        transferId = `${payment.holdId}:post`;
      }
      return { payment: await this.move(payment, PaymentStatus.SUCCEEDED, `${answer.operation === "status" ? "status" : "gateway"}: ${answer.code}`, { ...gatewayFields, transferId }) };
    } catch (error) {
      const refusal = ConnectError.from(error);
      const failureCode = declineCode(refusal);
      if (failureCode === undefined) throw refusal;
      // The gateway moved the money but the Wallet refuses to book it (a closed wallet, an expired
      // hold): the payment failed here while it succeeded there. Reconciliation must see it.
      this.log.error({ paymentId: payment.id, gateway, failureCode }, "gateway moved money the Wallet would not book; flagged for reconciliation");
      return {
        payment: await this.move(payment, PaymentStatus.FAILED, `booking refused: ${failureCode}`, {
          ...gatewayFields,
          failureCode: `booking_${failureCode}`,
          failureMessage: refusal.rawMessage,
          needsReconciliation: true,
        }),
      };
    }
  }

  private releaseHold(payment: PaymentRow): Promise<void> {
    return releaseQuietly(this.wallets, payment.tenantId, payment.holdId);
  }

  private async toUnknown(payment: PaymentRow, answer: GatewayCallRow): Promise<FlowResult> {
    const nextCheckAt = new Date(Date.now() + Math.max(CHECK_BACKOFF_BASE_MS, this.graceMs()));
    return { payment: await this.move(payment, PaymentStatus.OUTCOME_UNKNOWN, `outcome unknown: ${answer.code || answer.outcome}`, { nextCheckAt, checks: 0 }) };
  }

  /** A compare-and-set transition; the loser continues from what the winner recorded. */
  private async move(payment: PaymentRow, to: PaymentStatus, reason: string, fields: OutcomeFields): Promise<PaymentRow> {
    const moved = await persistTransition(this.db, payment, to, reason, fields, false);
    if (moved) return moved;
    const current = await findById(this.db, payment.id);
    if (!current) throw new ConnectError(`payment ${payment.id} vanished`, Code.Internal);
    return current;
  }
}

function resultRow(result: GatewayResult, latencyMs: number) {
  return {
    outcome: result.outcome,
    code: result.code,
    action: result.action,
    gatewayCode: result.gatewayCode,
    gatewayTransactionId: result.gatewayId ?? "",
    message: result.message.slice(0, 500),
    latencyMs,
  };
}

/**
 * An answer that decides the payment: the gateway's success or decline, or (on a money call) an
 * error the gateway's table says to stop at, such as a refused request, where nothing moved.
 */
function isFinalAnswer(call: GatewayCallRow): boolean {
  if (call.outcome === "succeeded" || call.outcome === "declined") return true;
  return call.operation !== "status" && call.outcome === "error" && call.action === "stop";
}

/**
 * The last money call (charge, payout, refund) whose effect is not known: sent with no answer,
 * or answered with a timeout, a pending status or an error that needs a status query, and not
 * followed by a status answer from the same gateway.
 */
function openQuestion(calls: readonly GatewayCallRow[]): GatewayCallRow | undefined {
  for (let index = calls.length - 1; index >= 0; index--) {
    const call = calls[index] as GatewayCallRow;
    if (call.operation === "status") {
      if (call.outcome === "not_found") return undefined;
      // An unanswered or inconclusive status: the question stays open; keep looking back.
      continue;
    }
    const unanswered = call.outcome === "sent" || call.outcome === "pending" || call.action === "query_status" || (call.outcome === "error" && call.action === "retry");
    return unanswered ? call : undefined;
  }
  return undefined;
}
