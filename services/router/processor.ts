// Drives a recorded payment to a final state: CREATED → PROCESSING, one Wallet.TransferFunds call
// under a key derived from the payment id, then PROCESSING → SUCCEEDED or FAILED. The request
// handler, a replay of the same key and the completer all use this one path. Safety does not
// depend on who runs it or how often: every status change is a compare-and-set (the loser re-reads
// and carries on from what is there), and the Wallet/Ledger apply a key at most once, so a second
// driver gets the first outcome back instead of moving money again. Within a process, concurrent
// drivers of one payment share a single run (twenty racing replays make one Wallet call).
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { PaymentKind, PaymentStatus } from "../../gen/cowrie/router/v1/router_pb.js";
import { WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { currentCallContext, remainingMs } from "../runtime/call-context.js";
import type { Db } from "../runtime/db.js";
import type { Logger } from "../runtime/log.js";
import { TRANSFER_CODE, refusalCodeOf } from "../wallet/codes.js";
import type { GatewayFlow } from "./gateway-flow.js";
import { riskOutcome, type RiskCheck } from "./risk.js";
import { MOVING_FUNDS, findById, isGatewayPayment, persistTransition, type OutcomeFields, type PaymentRow } from "./store.js";

/** The Wallet idempotency key of a payment's movement: one payment, one key, at most one transfer. */
export function walletKeyFor(paymentId: string): string {
  return `router:${paymentId}`;
}

/**
 * The failure code of a Wallet error that decides the payment for good, or undefined when the
 * outcome is not known (transport failure, deadline, breaker open, internal error): then the
 * payment stays PROCESSING and a later drive with the same key learns the outcome.
 */
export function declineCode(error: ConnectError): string | undefined {
  switch (error.code) {
    case Code.FailedPrecondition:
      // Every Wallet refusal carries a Refusal detail; "declined" only if one ever does not.
      return refusalCodeOf(error) || "declined";
    case Code.NotFound:
      return "wallet_not_found";
    case Code.InvalidArgument:
    case Code.OutOfRange:
      return "invalid";
    default:
      return undefined;
  }
}

/** Who is driving, which is also the reason recorded on the transitions it makes. */
export type Driver = "request" | "replay" | "completer" | "worker" | "resolver" | "webhook";

export interface DriveOutcome {
  /** The payment as the drive left it. */
  payment: PaymentRow;
  /** Why the drive stopped short of a final state, when it did (the Wallet call's error). */
  interruption?: ConnectError;
  /** Gateway payments: no gateway could take it now; drive it again after this long. */
  deferMs?: number;
}

/** Time kept back from the Wallet call to record its outcome before the caller's deadline. */
const RECORDING_RESERVE_MS = 250;

type Outcome = { to: PaymentStatus; reason: string; fields: OutcomeFields };

/** Releases a hold that may already be released or expired (then there is nothing to do). */
export async function releaseQuietly(wallet: Client<typeof WalletService>, tenantId: string, holdId: string): Promise<void> {
  try {
    await wallet.releaseHold({ tenantId, holdId });
  } catch (error) {
    if (ConnectError.from(error).code !== Code.FailedPrecondition) throw error;
  }
}

export class PaymentProcessor {
  private readonly running = new Map<string, Promise<DriveOutcome>>();
  /** Allowed verdicts not yet written: they go with the payment's outcome, saving a write. */
  private readonly verdicts = new Map<string, OutcomeFields>();

  constructor(
    private readonly db: Db,
    private readonly wallet: Client<typeof WalletService>,
    private readonly log: Logger,
    private readonly gateways: GatewayFlow,
    private readonly risk: RiskCheck,
  ) {}

  /**
   * Drives `payment` as far as it can go now; joins a drive of the same payment already running
   * (which keeps the deadline of the call that started it).
   */
  drive(payment: PaymentRow, driver: Driver, signal?: AbortSignal): Promise<DriveOutcome> {
    const gateway = isGatewayPayment(payment);
    const drivable = payment.status === PaymentStatus.CREATED || payment.status === PaymentStatus.PROCESSING || (gateway && payment.status === PaymentStatus.OUTCOME_UNKNOWN);
    if (!drivable) return Promise.resolve({ payment });
    let run = this.running.get(payment.id);
    if (!run) {
      run = (gateway ? this.runGateway(payment, driver, signal) : this.run(payment, driver, signal)).finally(() => this.running.delete(payment.id));
      this.running.set(payment.id, run);
    }
    return run;
  }

  /** Resolves once no drive is running (for shutdown). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running.values()]);
  }

  private async run(start: PaymentRow, driver: Driver, signal: AbortSignal | undefined): Promise<DriveOutcome> {
    let payment = start;
    for (;;) {
      if (payment.status === PaymentStatus.CREATED) {
        const reason = driver === "request" ? MOVING_FUNDS : driver;
        // Bound to the caller's deadline: past it, nothing starts moving.
        payment = (await persistTransition(this.db, payment, PaymentStatus.PROCESSING, reason, {}, true)) ?? (await this.reread(payment));
        continue;
      }
      if (payment.status !== PaymentStatus.PROCESSING) return { payment };
      let outcome: Outcome;
      try {
        outcome = (await this.riskStep(payment, signal)) ?? (await this.moveFunds(payment, driver, signal));
      } catch (error) {
        // A later drive asks Risk again, which answers with this same verdict.
        this.verdicts.delete(payment.id);
        const interruption = ConnectError.from(error);
        this.log.warn({ paymentId: payment.id, code: Code[interruption.code], err: interruption.rawMessage, driver }, "wallet outcome unknown; payment stays PROCESSING");
        return { payment, interruption };
      }
      const moved = await persistTransition(this.db, payment, outcome.to, outcome.reason, { ...this.verdicts.get(payment.id), ...outcome.fields }, false);
      if (moved) {
        this.verdicts.delete(payment.id);
        payment = moved;
        continue;
      }
      payment = await this.reread(payment);
      // Another driver recorded an outcome first. The Wallet gives one outcome per key, so this
      // should agree; if it does not (a refusal the Wallet did not keep as final), say so loudly.
      if (payment.status !== outcome.to && payment.status !== PaymentStatus.PROCESSING) {
        this.log.error({ paymentId: payment.id, recorded: PaymentStatus[payment.status], observed: PaymentStatus[outcome.to] }, "wallet outcome disagrees with the recorded one");
      }
    }
  }

  private async runGateway(payment: PaymentRow, driver: Driver, signal: AbortSignal | undefined): Promise<DriveOutcome> {
    try {
      return await this.gateways.drive(payment, driver, signal);
    } catch (error) {
      const interruption = ConnectError.from(error);
      this.log.warn({ paymentId: payment.id, code: Code[interruption.code], err: interruption.rawMessage, driver }, "gateway payment interrupted; it resumes from its last recovery point");
      return { payment: (await findById(this.db, payment.id)) ?? payment, interruption };
    }
  }

  /**
   * Risk's verdict, asked once per payment before its money moves: a block fails it, a review
   * holds its money and parks it IN_REVIEW. Undefined: go ahead and move the money (an allowed
   * payment, or one an operator approved). The verdict is written with the payment's next
   * transition.
   */
  private async riskStep(payment: PaymentRow, signal: AbortSignal | undefined): Promise<Outcome | undefined> {
    // An approved review goes on: its hold pays the transfer (moveFunds). A refund gives back
    // money its payment took and is not evaluated, as on the gateway path (gateway-flow.ts).
    if (payment.riskDecision !== "" || payment.kind === PaymentKind.REFUND) return undefined;
    const { fields, stop } = riskOutcome(await this.risk.evaluate(payment, signal));
    if (!stop) {
      this.verdicts.set(payment.id, fields);
      return undefined;
    }
    if (stop.to !== PaymentStatus.IN_REVIEW) return stop;
    try {
      const { hold } = await this.wallet.placeHold({
        tenantId: payment.tenantId,
        walletId: payment.sourceWalletId,
        destinationWalletId: payment.destinationWalletId,
        amountMinor: payment.amountMinor,
        currency: payment.currency,
        idempotencyKey: `router:${payment.id}:review`,
        reference: payment.reference,
      });
      return { ...stop, fields: { ...stop.fields, holdId: hold?.id ?? "" } };
    } catch (error) {
      const refusal = ConnectError.from(error);
      const failureCode = declineCode(refusal);
      if (failureCode === undefined) throw refusal;
      return { to: PaymentStatus.FAILED, reason: failureCode, fields: { ...fields, failureCode, failureMessage: refusal.rawMessage } };
    }
  }

  /** Someone else moved the payment: continue from its current state. */
  private async reread(payment: PaymentRow): Promise<PaymentRow> {
    const current = await findById(this.db, payment.id);
    if (!current) throw new ConnectError(`payment ${payment.id} vanished`, Code.Internal);
    return current;
  }

  /** One Wallet call; resolves with the final status, throws when the outcome is unknown. */
  private async moveFunds(payment: PaymentRow, driver: Driver, signal: AbortSignal | undefined) {
    const context = currentCallContext();
    const left = context ? remainingMs(context) : undefined;
    const timeoutMs = left === undefined ? undefined : Math.max(1, left - Math.min(RECORDING_RESERVE_MS, Math.floor(left / 4)));
    try {
      const response = await this.wallet.transferFunds(
        {
          tenantId: payment.tenantId,
          sourceWalletId: payment.sourceWalletId,
          destinationWalletId: payment.destinationWalletId,
          amountMinor: payment.amountMinor,
          currency: payment.currency,
          idempotencyKey: walletKeyFor(payment.id),
          reference: payment.reference,
          feeMinor: payment.feeMinor,
          // Ledger transfer codes, so statements tell payments and refunds from plain transfers.
          code: payment.kind === PaymentKind.REFUND ? TRANSFER_CODE.refund : TRANSFER_CODE.payment,
          omitWallets: true,
          // An approved review: the money held during the review pays the payment, released and
          // moved in one Ledger commit, so nothing can spend it in between.
          releaseHoldId: payment.riskDecision === "review" ? payment.holdId : "",
        },
        { timeoutMs, signal },
      );
      return {
        to: PaymentStatus.SUCCEEDED,
        reason: driver === "request" ? "funds moved" : driver,
        fields: { transferId: response.transferId },
      };
    } catch (error) {
      const refusal = ConnectError.from(error);
      const failureCode = declineCode(refusal);
      if (failureCode === undefined) throw refusal;
      return {
        to: PaymentStatus.FAILED,
        reason: driver === "request" ? failureCode : driver,
        fields: { failureCode, failureMessage: refusal.rawMessage },
      };
    }
  }
}
