// The Router's side of Risk: every payment is evaluated once, before any of its money moves, and
// the verdict is kept on the payment. Risk is fast but not essential: when it cannot answer within
// its budget (down, slow, its breaker open), COWRIE_RISK_WHEN_UNAVAILABLE decides, exactly as
// Risk itself decides when its Redis is unreachable, and the verdict says RISK_UNAVAILABLE.
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { Decision, RiskService } from "../../gen/cowrie/risk/v1/risk_pb.js";
import { PaymentKind, PaymentStatus } from "../../gen/cowrie/router/v1/router_pb.js";
import { errorText, sampledLog, type Logger } from "../runtime/log.js";
import type { Instrument } from "./schema.js";
import type { OutcomeFields, PaymentRow } from "./store.js";

export type RiskDecision = "allow" | "review" | "block";

export interface RiskVerdict {
  decision: RiskDecision;
  score: number;
  reasons: string[];
}

/** How soon after a payment enters review the Router first asks Risk about it. */
const REVIEW_FIRST_CHECK_MS = 1_000;

/**
 * What a verdict does to a payment, whichever path moves its money: the fields it writes, and for
 * a block or a review the transition it makes (a review's hold is the path's own to place).
 */
export function riskOutcome(verdict: RiskVerdict, nowMs = Date.now()): { fields: OutcomeFields; stop?: { to: PaymentStatus; reason: string; fields: OutcomeFields } } {
  const fields: OutcomeFields = { riskDecision: verdict.decision, riskScore: verdict.score, riskReasons: verdict.reasons };
  const reasons = verdict.reasons.join(", ");
  switch (verdict.decision) {
    case "allow":
      return { fields };
    case "block":
      return { fields, stop: { to: PaymentStatus.FAILED, reason: "risk_blocked", fields: { ...fields, failureCode: "risk_blocked", failureMessage: `blocked by risk rules: ${reasons}` } } };
    case "review":
      return { fields, stop: { to: PaymentStatus.IN_REVIEW, reason: `risk review: ${reasons}`, fields: { ...fields, nextCheckAt: new Date(nowMs + REVIEW_FIRST_CHECK_MS), checks: 0 } } };
  }
}

const DECISIONS: Partial<Record<Decision, RiskDecision>> = {
  [Decision.ALLOW]: "allow",
  [Decision.REVIEW]: "review",
  [Decision.BLOCK]: "block",
};

export interface RiskCheckOptions {
  /** Budget of one Evaluate call. */
  timeoutMs: number;
  whenUnavailable: RiskDecision;
}

/** Who receives the money, as Risk knows beneficiaries: a wallet, or a bank account. */
export function beneficiaryOf(payment: Pick<PaymentRow, "destinationWalletId" | "instrument">): string {
  if (payment.destinationWalletId !== "") return payment.destinationWalletId;
  const account = (payment.instrument as Instrument | null)?.bankAccount;
  return account ? `bank:${account.bankCode}:${account.accountNumber}` : "";
}

/** The user a payment is evaluated for when the request named none. */
export function defaultUserId(kind: PaymentKind, sourceWalletId: string, customerEmail: string): string {
  return kind === PaymentKind.PAY_IN ? customerEmail : sourceWalletId;
}

/** Risk away, slow or shedding load: the fallback's everyday case, logged once a second. */
const UNAVAILABLE_CODES: ReadonlySet<Code> = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted, Code.Aborted, Code.Canceled]);

export class RiskCheck {
  /** While Risk is away every payment falls back: one warning a second, with a count. */
  readonly #fallbackLog = sampledLog();

  constructor(
    private readonly risk: Client<typeof RiskService>,
    private readonly options: RiskCheckOptions,
    private readonly log: Logger,
  ) {}

  /** Risk's verdict on the payment (idempotent on its id at Risk), or the configured fallback. */
  async evaluate(payment: PaymentRow, signal?: AbortSignal): Promise<RiskVerdict> {
    try {
      const answer = await this.risk.evaluate(
        {
          tenantId: payment.tenantId,
          paymentId: payment.id,
          userId: payment.payer.userId,
          amountMinor: payment.amountMinor,
          currency: payment.currency,
          beneficiaryId: beneficiaryOf(payment),
          deviceId: payment.payer.deviceId ?? "",
          ipAddress: payment.payer.ipAddress ?? "",
        },
        { timeoutMs: this.options.timeoutMs, signal },
      );
      const decision = DECISIONS[answer.decision];
      if (!decision) throw new ConnectError(`risk answered decision ${answer.decision}`, Code.Internal);
      return { decision, score: answer.score, reasons: answer.reasons };
    } catch (error) {
      const code = ConnectError.from(error).code;
      const message = `risk could not evaluate the payment; applying COWRIE_RISK_WHEN_UNAVAILABLE=${this.options.whenUnavailable}`;
      if (UNAVAILABLE_CODES.has(code)) {
        this.#fallbackLog("evaluate", (notLogged) => this.log.warn({ paymentId: payment.id, err: errorText(error), notLogged }, message));
      } else {
        // Risk refused what the Router sent, or failed on it: a bug to fix (refunds once were
        // one), not an outage to ride out. Every one is logged.
        this.log.error({ paymentId: payment.id, err: errorText(error), code: Code[code] }, message);
      }
      return { decision: this.options.whenUnavailable, score: 0, reasons: ["RISK_UNAVAILABLE"] };
    }
  }
}
