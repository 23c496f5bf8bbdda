// The Router's payment as callers and events see it, and the event each status change writes
// to the outbox in the transaction of the change (store.ts), so that an event exists exactly when
// the change committed.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { PaymentStatusChangedSchema } from "../../gen/cowrie/events/v1/events_pb.js";
import {
  BankAccountSchema,
  PaymentSchema,
  PaymentStatus,
  RiskAssessmentSchema,
  StatusChangeSchema,
  type Payment,
} from "../../gen/cowrie/router/v1/router_pb.js";
import type { NewEvent } from "../runtime/events.js";
import { gatewayReference } from "./gateway-flow.js";
import { isGatewayPayment, type PaymentRow, type TransitionRow } from "./store.js";

export function paymentMessage(row: PaymentRow, history: TransitionRow[] = []): Payment {
  return create(PaymentSchema, {
    id: row.id,
    tenantId: row.tenantId,
    kind: row.kind,
    status: row.status,
    amountMinor: row.amountMinor,
    currency: row.currency,
    sourceWalletId: row.sourceWalletId,
    destinationWalletId: row.destinationWalletId,
    failureCode: row.failureCode,
    failureMessage: row.failureMessage,
    createdAt: timestampFromDate(row.createdAt),
    updatedAt: timestampFromDate(row.updatedAt),
    feeMinor: row.feeMinor,
    refundedMinor: row.refundedMinor,
    reference: row.reference,
    refundedPaymentId: row.refundedPaymentId ?? "",
    transferId: row.transferId,
    gateway: row.gateway,
    gatewayReference: row.gateway === "" || !isGatewayPayment(row) ? "" : gatewayReference(row.id, row.gateway),
    gatewayTransactionId: row.gatewayTransactionId,
    needsReconciliation: row.needsReconciliation,
    holdId: row.holdId,
    paymentMethod: row.instrument?.paymentMethod ?? "",
    bankAccount: row.instrument?.bankAccount ? create(BankAccountSchema, row.instrument.bankAccount) : undefined,
    country: row.instrument?.country ?? "",
    risk: create(RiskAssessmentSchema, { decision: row.riskDecision, score: row.riskScore, reasons: row.riskReasons, userId: row.payer.userId }),
    history: history.map((change) =>
      create(StatusChangeSchema, {
        fromStatus: change.fromStatus,
        toStatus: change.toStatus,
        time: timestampFromDate(change.at),
        reason: change.reason,
      }),
    ),
  });
}

/** "payment.succeeded" and so on: the event type and routing key of a payment entering `status`. */
export function paymentEventType(status: PaymentStatus): string {
  return `payment.${PaymentStatus[status].toLowerCase()}`;
}

export function paymentStatusChanged(row: PaymentRow, previous: PaymentStatus, reason: string): NewEvent<typeof PaymentStatusChangedSchema> {
  return {
    type: paymentEventType(row.status as PaymentStatus),
    subject: `payment/${row.id}`,
    tenantId: row.tenantId,
    schema: PaymentStatusChangedSchema,
    data: create(PaymentStatusChangedSchema, { payment: paymentMessage(row), previousStatus: previous, reason, version: BigInt(row.version) }),
  };
}
