// Internal messages to public ones, field by field. The public contract mirrors the internal
// one without tenant_id and idempotency_key; spelling each field out means a field added inside
// never leaks to the public API by accident, and the enums (same numbers on both sides, by
// design) convert in one visible place.
import { create } from "@bufbuild/protobuf";
import {
  HoldSchema,
  StatementEntrySchema,
  WalletLimitsSchema,
  WalletSchema,
  type EntryDirection,
  type EntryType,
  type Hold,
  type HoldStatus,
  type StatementEntry,
  type Wallet,
  type WalletKind,
  type WalletLimits,
  type WalletStatus,
} from "../../gen/cowrie/edge/v1/wallets_pb.js";
import {
  BankAccountSchema,
  PaymentSchema,
  RiskAssessmentSchema,
  StatusChangeSchema,
  type Payment,
  type PaymentKind,
  type PaymentStatus,
  type StatusChange,
} from "../../gen/cowrie/edge/v1/payments_pb.js";
import type * as router from "../../gen/cowrie/router/v1/router_pb.js";
import type * as wallet from "../../gen/cowrie/wallet/v1/wallet_pb.js";

/** Public and internal enums share their numbers; this is the one place that relies on it. */
function sameNumber<T extends number>(value: number): T {
  return value as T;
}

export function publicLimits(limits: wallet.WalletLimits | undefined): WalletLimits | undefined {
  if (!limits) return undefined;
  return create(WalletLimitsSchema, {
    perTransactionMinor: limits.perTransactionMinor,
    dailyOutflowMinor: limits.dailyOutflowMinor,
  });
}

export function internalLimits(limits: WalletLimits | undefined): { perTransactionMinor: bigint; dailyOutflowMinor: bigint } | undefined {
  if (!limits) return undefined;
  return { perTransactionMinor: limits.perTransactionMinor, dailyOutflowMinor: limits.dailyOutflowMinor };
}

export function publicWallet(source: wallet.Wallet | undefined): Wallet | undefined {
  if (!source) return undefined;
  return create(WalletSchema, {
    id: source.id,
    ownerId: source.ownerId,
    currency: source.currency,
    kind: sameNumber<WalletKind>(source.kind),
    status: sameNumber<WalletStatus>(source.status),
    postedBalanceMinor: source.postedBalanceMinor,
    pendingDebitsMinor: source.pendingDebitsMinor,
    availableBalanceMinor: source.availableBalanceMinor,
    createdAt: source.createdAt,
    minorUnitExponent: source.minorUnitExponent,
    limits: publicLimits(source.limits),
    outflowTodayMinor: source.outflowTodayMinor,
    frozenReason: source.frozenReason,
    updatedAt: source.updatedAt,
  });
}

export function publicStatementEntry(source: wallet.StatementEntry): StatementEntry {
  return create(StatementEntrySchema, {
    transferId: source.transferId,
    time: source.time,
    direction: sameNumber<EntryDirection>(source.direction),
    type: sameNumber<EntryType>(source.type),
    amountMinor: source.amountMinor,
    balanceAfterMinor: source.balanceAfterMinor,
    counterparty: source.counterparty,
    reference: source.reference,
  });
}

export function publicHold(source: wallet.Hold | undefined): Hold | undefined {
  if (!source) return undefined;
  return create(HoldSchema, {
    id: source.id,
    walletId: source.walletId,
    destinationWalletId: source.destinationWalletId,
    amountMinor: source.amountMinor,
    currency: source.currency,
    status: sameNumber<HoldStatus>(source.status),
    capturedMinor: source.capturedMinor,
    reference: source.reference,
    createdAt: source.createdAt,
    expiresAt: source.expiresAt,
    updatedAt: source.updatedAt,
  });
}

export function publicStatusChange(source: router.StatusChange): StatusChange {
  return create(StatusChangeSchema, {
    fromStatus: sameNumber<PaymentStatus>(source.fromStatus),
    toStatus: sameNumber<PaymentStatus>(source.toStatus),
    time: source.time,
    reason: source.reason,
  });
}

export function publicPayment(source: router.Payment | undefined): Payment | undefined {
  if (!source) return undefined;
  return create(PaymentSchema, {
    id: source.id,
    kind: sameNumber<PaymentKind>(source.kind),
    status: sameNumber<PaymentStatus>(source.status),
    amountMinor: source.amountMinor,
    currency: source.currency,
    sourceWalletId: source.sourceWalletId,
    destinationWalletId: source.destinationWalletId,
    failureCode: source.failureCode,
    createdAt: source.createdAt,
    updatedAt: source.updatedAt,
    feeMinor: source.feeMinor,
    refundedMinor: source.refundedMinor,
    failureMessage: source.failureMessage,
    reference: source.reference,
    refundedPaymentId: source.refundedPaymentId,
    transferId: source.transferId,
    history: source.history.map(publicStatusChange),
    gateway: source.gateway,
    gatewayReference: source.gatewayReference,
    gatewayTransactionId: source.gatewayTransactionId,
    needsReconciliation: source.needsReconciliation,
    holdId: source.holdId,
    paymentMethod: source.paymentMethod,
    bankAccount: source.bankAccount ? create(BankAccountSchema, {
      bankCode: source.bankAccount.bankCode,
      accountNumber: source.bankAccount.accountNumber,
      accountName: source.bankAccount.accountName,
    }) : undefined,
    country: source.country,
    risk: source.risk ? create(RiskAssessmentSchema, {
      decision: source.risk.decision,
      score: source.risk.score,
      reasons: source.risk.reasons,
      userId: source.risk.userId,
    }) : undefined,
  });
}
