// The Router's side of Risk: every payment is evaluated once, before any of its money moves, and
// the verdict is kept on the payment. Risk is fast but not essential: when it cannot answer within
// its budget (down, slow, its breaker open), COWRIE_RISK_WHEN_UNAVAILABLE decides, exactly as
// Risk itself decides when its Redis is unreachable, and the verdict says RISK_UNAVAILABLE.
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { Decision, RiskService } from "../../gen/cowrie/risk/v1/risk_pb.js";
import { PaymentKind } from "../../gen/cowrie/router/v1/router_pb.js";
import { errorText, type Logger } from "../runtime/log.js";
import type { Instrument } from "./schema.js";
import type { PaymentRow } from "./store.js";

export type RiskDecision = "allow" | "review" | "block";

export interface RiskVerdict {
  decision: RiskDecision;
  score: number;
  reasons: string[];
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

export class RiskCheck {
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
      this.log.warn({ paymentId: payment.id, err: errorText(error) }, `risk could not evaluate the payment; applying COWRIE_RISK_WHEN_UNAVAILABLE=${this.options.whenUnavailable}`);
      return { decision: this.options.whenUnavailable, score: 0, reasons: ["RISK_UNAVAILABLE"] };
    }
  }
}
