// The reconciliation engine: one run compares, over a window [from, to) of time,
//
//   payments  ↔ Ledger    every payment created in the window (read by id range, in batches) and
//                         final: its transfer, or its hold's capture, must exist with its amount
//                         and currency when it SUCCEEDED, and must not when it FAILED;
//   payments  ↔ gateways  the same payments against each gateway's own transaction lists, read
//                         once per run for [from, now]: a success where Cowrie failed, no success
//                         where Cowrie succeeded, another amount or currency, two captures;
//   gateways  → payments  every gateway transaction of the window that no payment of the window
//                         took: its payment (by the reference Cowrie sent) must exist and agree;
//   Ledger    → payments  every transfer on the gateways' clearing accounts in the window must be
//                         the transfer or hold of a payment.
//
// Payments still in flight are kept in recon_pending and looked at again by every later run until
// they are final (and checked) or stuck (a finding), so a watermark moving past them loses none.
// Ledger ids need no lookup table: the Wallet derives them from the Router's idempotency keys
// (router:<payment id>, router:<payment id>:hold:<gateway>), and so does this engine.
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { LedgerService, TransferKind, type Transfer } from "../../../gen/cowrie/ledger/v1/ledger_pb.js";
import { FindingType, Severity } from "../../../gen/cowrie/router/v1/reconciliation_pb.js";
import { PaymentKind, PaymentStatus } from "../../../gen/cowrie/router/v1/router_pb.js";
import type { Db } from "../../runtime/db.js";
import { errorText, type Logger } from "../../runtime/log.js";
import { metrics } from "../../runtime/metrics.js";
import { captureIdFor, clearingAccountId, holdIdFor, transferIdFor } from "../../wallet/service.js";
import { GATEWAY_NAMES, type Connector, type GatewayName, type GatewayTransaction, type Operation } from "../gateways/connector.js";
import { gatewayReference, operationOf, paymentIdOfReference } from "../gateway-flow.js";
import { isGatewayPayment, type PaymentRow } from "../store.js";
import { runLimited } from "../../runtime/limits.js";
import {
  addPending,
  autoResolveFinding,
  calledGateways,
  enumName,
  flaggedUnknown,
  noteFinding,
  paymentKeysInWindow,
  paymentsByIds,
  paymentsInWindow,
  pendingAfter,
  raiseFinding,
  removePending,
  tenantPaymentKeys,
  type Detection,
} from "./store.js";

export interface EngineOptions {
  batchSize: number;
  stuckPendingMs: number;
  stuckProcessingMs: number;
  /** Longest one gateway list page or status query may take. */
  gatewayTimeoutMs: number;
}

/** Drives a payment through the Router's own paths (the completer's, the resolver's); returns it as left. */
export type Driver = (payment: PaymentRow, driver: "completer" | "resolver") => Promise<PaymentRow>;

export interface EngineDeps {
  db: Db;
  connectors: ReadonlyMap<GatewayName, Connector>;
  ledger: Client<typeof LedgerService>;
  drive: Driver;
  log: Logger;
  options: EngineOptions;
  /** Called between batches, to renew the run's lease. */
  heartbeat?: () => Promise<void>;
}

/** What a run counted; the summary stored with it. */
export interface RunTally {
  paymentsChecked: number;
  paymentsMatched: number;
  gatewayTransactionsChecked: number;
  gatewayTransactionsMatched: number;
  ledgerTransfersChecked: number;
  ledgerTransfersMatched: number;
  deferred: number;
  findingsByType: Record<string, number>;
  findingsOpened: number;
  autoResolved: number;
}

/** A final payment is one whose money will not move again on its own. */
const FINAL = new Set<number>([PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED]);
/** Ledger ids this many ms older than the window are still expected on clearing accounts (late settlements). */
const LEDGER_LOOKBACK_MS = 60 * 60_000;
/** A clearing transfer matching no recent payment is looked for among its tenant's payments this far back. */
const TENANT_LOOKBACK_MS = 7 * 24 * 60 * 60_000;
const LEDGER_LOOKUP_MAX = 8_000;
const LEDGER_HISTORY_PAGE = 1_000;
const AUTO_RESOLVE_CONCURRENCY = 4;
/** Most pending and flagged payments one run looks at again. */
const RECHECK_MAX = 20_000;
/**
 * Gateway lists are read from this long before the window: a gateway's clock is not Cowrie's,
 * and Stripe's times are whole seconds, so a payment's record can sit just before its window.
 */
const LIST_MARGIN_MS = 60_000;

const OPERATIONS: readonly Operation[] = ["charge", "payout", "refund"];

/** Payouts and refunds of pay-ins move their money by a Wallet hold that is captured. */
function movesByHold(payment: Pick<PaymentRow, "kind" | "destinationWalletId">): boolean {
  return payment.kind === PaymentKind.PAYOUT || (payment.kind === PaymentKind.REFUND && payment.destinationWalletId === "");
}

/** The Ledger transfer a payment's own money movement has (for a hold: its capture), if it can have one. */
export function mainTransferId(payment: Pick<PaymentRow, "id" | "tenantId" | "kind" | "destinationWalletId" | "holdId">): string | undefined {
  if (movesByHold(payment)) return payment.holdId === "" ? undefined : captureIdFor(payment.holdId);
  return transferIdFor(payment.tenantId, `router:${payment.id}`);
}

/** Every hold the Router could have placed for a payment, one per gateway (PAYOUT and refunds of pay-ins). */
function possibleHolds(payment: Pick<PaymentRow, "id" | "tenantId">, gateways: readonly string[]): string[] {
  return gateways.map((gateway) => holdIdFor(payment.tenantId, `router:${payment.id}:hold:${gateway}`));
}

/** The id of the Ledger transfer that expires a pending one (ledger/service.ts; hold ids are short enough). */
function expiryIdFor(pendingId: string): string {
  return `expire:${pendingId}`;
}

/** The Ledger transfers that may touch gateway clearing accounts for a payment: its pay-in credit, or its holds. */
function clearingIds(key: { id: string; tenantId: string; kind: number }): string[] {
  if (key.kind === PaymentKind.PAY_IN) return [transferIdFor(key.tenantId, `router:${key.id}`)];
  if (key.kind === PaymentKind.PAYOUT || key.kind === PaymentKind.REFUND) return possibleHolds(key, GATEWAY_NAMES);
  return [];
}

function gatewayKey(gateway: string, operation: string, reference: string): string {
  return `${gateway}|${operation}|${reference}`;
}

export class RunFailed extends Error {}

/** One run over one window. Create, then run(). */
export class ReconciliationRun {
  readonly tally: RunTally = {
    paymentsChecked: 0,
    paymentsMatched: 0,
    gatewayTransactionsChecked: 0,
    gatewayTransactionsMatched: 0,
    ledgerTransfersChecked: 0,
    ledgerTransfersMatched: 0,
    deferred: 0,
    findingsByType: {},
    findingsOpened: 0,
    autoResolved: 0,
  };
  /** Gateway transactions listed for [from, now], by gateway, operation and reference. */
  private readonly listed = new Map<string, GatewayTransaction[]>();
  /** Gateway ids already compared with their payment. */
  private readonly consumed = new Set<string>();
  /** Ledger ids of payments near the window, for the clearing accounts' transfers. */
  private readonly expectedLedgerIds = new Set<string>();
  private readonly listFromMs: number;

  constructor(
    private readonly deps: EngineDeps,
    readonly runId: string,
    readonly from: Date,
    readonly to: Date,
    private readonly now = new Date(),
  ) {
    this.listFromMs = from.getTime() - LIST_MARGIN_MS;
  }

  async run(): Promise<RunTally> {
    await this.listGateways();
    // Payments of the window, batch by batch.
    for (let after = ""; ;) {
      const batch = await paymentsInWindow(this.deps.db, this.from, this.to, after, this.deps.options.batchSize);
      if (batch.length === 0) break;
      await this.checkPayments(batch);
      after = (batch.at(-1) as PaymentRow).id;
      await this.deps.heartbeat?.();
      if (batch.length < this.deps.options.batchSize) break;
    }
    // Payments earlier runs saw in flight, and unknown outcomes the resolver flagged.
    let rechecked = 0;
    for (let after = ""; rechecked < RECHECK_MAX;) {
      const ids = await pendingAfter(this.deps.db, after, this.deps.options.batchSize);
      if (ids.length === 0) break;
      rechecked += ids.length;
      const rows = await paymentsByIds(this.deps.db, ids);
      // Inside the window they were just checked; only older ones are looked at again.
      await this.checkPayments(rows.filter((row) => row.createdAt < this.from), true);
      await removePending(this.deps.db, ids.filter((id) => !rows.some((row) => row.id === id)));
      after = ids.at(-1) as string;
      if (ids.length < this.deps.options.batchSize) break;
    }
    const flagged = (await flaggedUnknown(this.deps.db, this.deps.options.batchSize)).filter((row) => row.createdAt < this.from);
    if (flagged.length > 0) await this.checkPayments(flagged, true);
    await this.checkGatewayOrphans();
    await this.checkClearingAccounts();
    return this.tally;
  }

  // -------------------------------------------------------------------------------------------
  // Gateways' lists

  private async listGateways(): Promise<void> {
    const toMs = Math.max(this.to.getTime(), this.now.getTime() + 1);
    for (const [name, connector] of this.deps.connectors) {
      for (const operation of OPERATIONS) {
        const answer = await connector.listTransactions({ operation, fromMs: this.listFromMs, toMs }, { timeoutMs: this.deps.options.gatewayTimeoutMs });
        if ("failed" in answer) {
          // A partial picture would raise false findings by the thousand: the run fails instead.
          throw new RunFailed(`${name} ${operation} list failed: ${answer.failed.code} ${answer.failed.message}`);
        }
        for (const transaction of answer.transactions) {
          const key = gatewayKey(name, operation, transaction.reference);
          const list = this.listed.get(key) ?? [];
          list.push(transaction);
          this.listed.set(key, list);
        }
      }
    }
  }

  /** The gateway's transactions for a payment's reference there; asks the gateway when its list did not cover it. */
  private async gatewayRecords(payment: PaymentRow, gateway: string, askIfUnlisted: boolean): Promise<GatewayTransaction[]> {
    const operation = operationOf(payment);
    const reference = gatewayReference(payment.id, gateway);
    const listed = this.listed.get(gatewayKey(gateway, operation, reference)) ?? [];
    for (const transaction of listed) this.consumed.add(`${gateway}|${operation}|${transaction.gatewayId}`);
    if (listed.length > 0 || !askIfUnlisted) return listed;
    const connector = this.deps.connectors.get(gateway as GatewayName);
    if (!connector) return [];
    const answer = await connector.status(operation, reference, { timeoutMs: this.deps.options.gatewayTimeoutMs });
    if (answer.outcome === "error") throw new RunFailed(`${gateway} status of ${reference} failed: ${answer.code} ${answer.message}`);
    if (answer.outcome === "not_found") return [];
    return [{
      gateway: gateway as GatewayName,
      operation,
      reference,
      gatewayId: answer.gatewayId ?? "",
      amountMinor: undefined,
      currency: "",
      outcome: answer.outcome,
      gatewayStatus: answer.gatewayCode,
      createdAt: this.now,
    }];
  }

  // -------------------------------------------------------------------------------------------
  // Payments

  private async checkPayments(rows: readonly PaymentRow[], recheck = false): Promise<void> {
    if (rows.length === 0) return;
    const gatewayRows = rows.filter(isGatewayPayment);
    const calls = await calledGateways(this.deps.db, gatewayRows.map((row) => row.id));
    const gatewaysOf = (row: PaymentRow): string[] => [...new Set([...(calls.get(row.id) ?? []).map((call) => call.gateway), ...(row.gateway ? [row.gateway] : [])])];

    // Every Ledger id these payments may have, looked up in one go.
    const wanted = new Set<string>();
    for (const row of rows) {
      for (const id of clearingIds(row)) this.expectedLedgerIds.add(id);
      if (!FINAL.has(row.status)) continue;
      const main = mainTransferId(row);
      if (main) wanted.add(main);
      if (movesByHold(row)) {
        for (const hold of possibleHolds(row, gatewaysOf(row))) {
          wanted.add(captureIdFor(hold));
          wanted.add(expiryIdFor(hold));
        }
      }
    }
    const transfers = await this.lookupTransfers([...wanted]);

    const pending: string[] = [];
    const done: string[] = [];
    const settle: { row: PaymentRow; findingId: string; driver: "completer" | "resolver" }[] = [];
    for (const row of rows) {
      if (!FINAL.has(row.status)) {
        const stuck = await this.stuckFinding(row);
        if (stuck) {
          const { finding } = await this.raise(stuck.detection);
          if (finding.status === 1) settle.push({ row, findingId: finding.id, driver: stuck.driver });
        } else {
          this.tally.deferred++;
        }
        pending.push(row.id);
        continue;
      }
      done.push(row.id);
      const detections = await this.checkFinal(row, gatewaysOf(row), transfers, recheck);
      this.tally.paymentsChecked++;
      if (detections.length === 0) this.tally.paymentsMatched++;
      metrics().reconChecked.inc({ side: "payment", result: detections.length === 0 ? "matched" : "mismatched" });
      for (const detection of detections) await this.raise(detection);
    }
    await addPending(this.deps.db, pending, this.now);
    await removePending(this.deps.db, done);
    await this.autoResolve(settle);
  }

  private async lookupTransfers(ids: string[]): Promise<Map<string, Transfer>> {
    const found = new Map<string, Transfer>();
    for (let start = 0; start < ids.length; start += LEDGER_LOOKUP_MAX) {
      const { transfers } = await this.deps.ledger.lookupTransfers({ ids: ids.slice(start, start + LEDGER_LOOKUP_MAX) }, { timeoutMs: 30_000 });
      for (const transfer of transfers) found.set(transfer.id, transfer);
    }
    return found;
  }

  /** A payment not final: a finding once it has waited past its limit, with the path that may settle it. */
  private async stuckFinding(row: PaymentRow): Promise<{ detection: Detection; driver: "completer" | "resolver" } | undefined> {
    const ageMs = this.now.getTime() - row.updatedAt.getTime();
    const base = { subject: `payment/${row.id}`, paymentId: row.id, tenantId: row.tenantId, gateway: row.gateway };
    if (row.status === PaymentStatus.OUTCOME_UNKNOWN && row.needsReconciliation) {
      return {
        driver: "resolver",
        detection: { ...base, type: FindingType.OUTCOME_UNKNOWN, severity: Severity.HIGH, detail: `the outcome at ${row.gateway || "the gateway"} is still unknown after ${row.checks} checks; flagged needs_reconciliation` },
      };
    }
    if ((row.status === PaymentStatus.CREATED || row.status === PaymentStatus.OUTCOME_UNKNOWN) && ageMs > this.deps.options.stuckPendingMs) {
      return {
        driver: row.status === PaymentStatus.CREATED ? "completer" : "resolver",
        detection: { ...base, type: FindingType.STUCK_PENDING, severity: Severity.MEDIUM, detail: `${PaymentStatus[row.status]} since ${row.updatedAt.toISOString()} (${Math.round(ageMs / 1000)} s)` },
      };
    }
    if (row.status === PaymentStatus.PROCESSING && ageMs > this.deps.options.stuckProcessingMs) {
      return {
        driver: "completer",
        detection: { ...base, type: FindingType.STUCK_PROCESSING, severity: Severity.MEDIUM, detail: `PROCESSING since ${row.updatedAt.toISOString()} (${Math.round(ageMs / 1000)} s)` },
      };
    }
    return undefined;
  }

  /** Every mismatch of one final payment, against the Ledger and its gateways. */
  private async checkFinal(row: PaymentRow, gateways: string[], transfers: Map<string, Transfer>, recheck: boolean): Promise<Detection[]> {
    const detections: Detection[] = [];
    const base = { paymentId: row.id, tenantId: row.tenantId };
    const succeeded = row.status === PaymentStatus.SUCCEEDED;
    const mainId = mainTransferId(row);
    const main = mainId ? transfers.get(mainId) : undefined;

    // Ledger.
    if (succeeded && !main) {
      detections.push({
        ...base,
        type: FindingType.COMPLETED_WITHOUT_LEDGER_ENTRY,
        severity: Severity.HIGH,
        subject: `payment/${row.id}/ledger`,
        ledgerTransferId: mainId ?? "",
        expectedAmountMinor: row.amountMinor,
        expectedCurrency: row.currency,
        detail: mainId ? `SUCCEEDED but the Ledger has no transfer ${mainId}` : "SUCCEEDED but no hold was ever recorded for it, so nothing can have been captured",
      });
    }
    if (succeeded && main) {
      // An internal payment's main leg carries the amount less its fee (the fee is a linked leg).
      const expected = movesByHold(row) || row.kind === PaymentKind.PAY_IN ? row.amountMinor : row.amountMinor - row.feeMinor;
      if (main.amountMinor !== expected) {
        detections.push({
          ...base,
          type: FindingType.AMOUNT_MISMATCH,
          severity: Severity.HIGH,
          subject: `payment/${row.id}/ledger-amount`,
          ledgerTransferId: main.id,
          expectedAmountMinor: expected,
          observedAmountMinor: main.amountMinor,
          detail: `the Ledger transfer ${main.id} moved ${main.amountMinor}; the payment says ${expected}`,
        });
      }
      if (main.currency !== "" && main.currency !== row.currency) {
        detections.push({
          ...base,
          type: FindingType.CURRENCY_MISMATCH,
          severity: Severity.HIGH,
          subject: `payment/${row.id}/ledger-currency`,
          ledgerTransferId: main.id,
          expectedCurrency: row.currency,
          observedCurrency: main.currency,
          detail: `the Ledger transfer ${main.id} is in ${main.currency}; the payment is in ${row.currency}`,
        });
      }
    }
    const holds = movesByHold(row) ? possibleHolds(row, gateways) : [];
    const captured = holds.map((hold) => transfers.get(captureIdFor(hold))).find((transfer) => transfer !== undefined);
    const debit = movesByHold(row) ? captured : main;
    if (!succeeded && debit) {
      detections.push({
        ...base,
        type: FindingType.FAILED_BUT_DEBITED,
        severity: Severity.CRITICAL,
        subject: `payment/${row.id}/ledger`,
        ledgerTransferId: debit.id,
        observedAmountMinor: debit.amountMinor,
        observedCurrency: debit.currency,
        detail: `${PaymentStatus[row.status]} (${row.failureCode}) but the Ledger moved ${debit.amountMinor} ${debit.currency} in ${debit.id}`,
      });
    }

    // Gateways.
    if (!isGatewayPayment(row)) return detections;
    const operation = operationOf(row);
    // A payment rechecked long after its window has its records before this run's lists: ask.
    const askIfUnlisted = recheck || row.createdAt.getTime() < this.listFromMs;
    const successes: GatewayTransaction[] = [];
    let ownRecords: GatewayTransaction[] = [];
    for (const gateway of gateways) {
      const records = await this.gatewayRecords(row, gateway, askIfUnlisted || (succeeded && gateway === row.gateway));
      if (gateway === row.gateway) ownRecords = records;
      successes.push(...records.filter((record) => record.outcome === "succeeded"));
    }
    if (succeeded) {
      const own = ownRecords.filter((record) => record.outcome === "succeeded");
      if (own.length === 0) {
        detections.push({
          ...base,
          type: FindingType.COMPLETED_WITHOUT_GATEWAY_CAPTURE,
          severity: Severity.HIGH,
          subject: `payment/${row.id}/gateway`,
          gateway: row.gateway,
          gatewayTransactionId: ownRecords[0]?.gatewayId ?? row.gatewayTransactionId,
          expectedAmountMinor: row.amountMinor,
          expectedCurrency: row.currency,
          detail: ownRecords.length === 0
            ? `SUCCEEDED but ${row.gateway} has no ${operation} with reference ${gatewayReference(row.id, row.gateway)}`
            : `SUCCEEDED but ${row.gateway} says ${ownRecords.map((record) => record.gatewayStatus).join(", ")}`,
        });
      }
      for (const record of own) detections.push(...this.compareAmounts(row, record));
    }
    if (succeeded && successes.length > 1) {
      detections.push({
        ...base,
        type: FindingType.DUPLICATE_CAPTURE,
        severity: Severity.CRITICAL,
        subject: `payment/${row.id}/capture`,
        gateway: successes.map((record) => record.gateway).join(","),
        gatewayTransactionId: successes.map((record) => record.gatewayId).join(","),
        expectedAmountMinor: row.amountMinor,
        observedAmountMinor: successes.reduce((sum, record) => sum + (record.amountMinor ?? 0n), 0n),
        detail: `captured ${successes.length} times: ${successes.map((record) => `${record.gateway} ${record.gatewayId}`).join(", ")}`,
      });
    }
    if (!succeeded && successes.length > 0) {
      const first = successes[0] as GatewayTransaction;
      const expired = holds.find((hold) => transfers.has(expiryIdFor(hold)));
      const holdGone = expired !== undefined || row.failureCode === "booking_hold_not_held";
      detections.push({
        ...base,
        type: holdGone ? FindingType.HOLD_EXPIRED_BUT_CAPTURED : FindingType.FAILED_BUT_GATEWAY_CAPTURED,
        severity: Severity.CRITICAL,
        subject: `payment/${row.id}/gateway`,
        gateway: first.gateway,
        gatewayTransactionId: first.gatewayId,
        ledgerTransferId: expired ? expiryIdFor(expired) : "",
        observedAmountMinor: first.amountMinor ?? 0n,
        observedCurrency: first.currency,
        detail: holdGone
          ? `${first.gateway} ${first.operation} ${first.gatewayId} succeeded, but the hold on the wallet had expired: the money left without being booked`
          : `${PaymentStatus[row.status]} (${row.failureCode}) but ${first.gateway} ${first.operation} ${first.gatewayId} succeeded`,
      });
    }
    return detections;
  }

  /** Amount and currency of one gateway transaction against its payment. */
  private compareAmounts(row: PaymentRow, record: GatewayTransaction): Detection[] {
    const detections: Detection[] = [];
    const base = { paymentId: row.id, tenantId: row.tenantId, gateway: record.gateway, gatewayTransactionId: record.gatewayId };
    if (record.amountMinor !== undefined && record.amountMinor !== row.amountMinor) {
      detections.push({
        ...base,
        type: FindingType.AMOUNT_MISMATCH,
        severity: Severity.HIGH,
        subject: `payment/${row.id}/gateway-amount`,
        expectedAmountMinor: row.amountMinor,
        observedAmountMinor: record.amountMinor,
        detail: `${record.gateway} ${record.operation} ${record.gatewayId} is for ${record.amountMinor}; the payment is for ${row.amountMinor}`,
      });
    }
    if (record.currency !== "" && record.currency !== row.currency) {
      detections.push({
        ...base,
        type: FindingType.CURRENCY_MISMATCH,
        severity: Severity.HIGH,
        subject: `payment/${row.id}/gateway-currency`,
        expectedCurrency: row.currency,
        observedCurrency: record.currency,
        detail: `${record.gateway} ${record.operation} ${record.gatewayId} is in ${record.currency}; the payment is in ${row.currency}`,
      });
    }
    return detections;
  }

  /** Drives stuck and unknown payments through the Router's own paths; settled ones close their finding. */
  private async autoResolve(items: { row: PaymentRow; findingId: string; driver: "completer" | "resolver" }[]): Promise<void> {
    await runLimited(items, AUTO_RESOLVE_CONCURRENCY, async ({ row, findingId, driver }) => {
      try {
        const after = await this.deps.drive(row, driver);
        const settled = driver === "resolver" ? after.status !== PaymentStatus.OUTCOME_UNKNOWN : FINAL.has(after.status);
        if (settled && (await autoResolveFinding(this.deps.db, findingId, `${driver} settled it: ${PaymentStatus[after.status]}`, new Date()))) {
          this.tally.autoResolved++;
        } else if (!settled) {
          await noteFinding(this.deps.db, findingId, "auto_resolution_failed", `${driver} left it ${PaymentStatus[after.status]}`, new Date());
        }
      } catch (error) {
        await noteFinding(this.deps.db, findingId, "auto_resolution_failed", `${driver}: ${errorText(error)}`, new Date());
      }
    });
  }

  private async raise(detection: Detection) {
    const name = enumName(FindingType, detection.type);
    this.tally.findingsByType[name] = (this.tally.findingsByType[name] ?? 0) + 1;
    const result = await raiseFinding(this.deps.db, detection, this.runId, this.now);
    if (result.created) {
      this.tally.findingsOpened++;
      metrics().reconFindings.inc({ type: name, severity: enumName(Severity, detection.severity) });
      const log = detection.severity === Severity.CRITICAL ? this.deps.log.error.bind(this.deps.log) : this.deps.log.warn.bind(this.deps.log);
      log({ findingId: result.finding.id, type: name, subject: detection.subject }, `reconciliation finding: ${detection.detail}`);
    }
    return result;
  }

  // -------------------------------------------------------------------------------------------
  // Gateway transactions no payment of the window took

  private async checkGatewayOrphans(): Promise<void> {
    const orphans: GatewayTransaction[] = [];
    for (const list of this.listed.values()) {
      for (const record of list) {
        const at = record.createdAt.getTime();
        if (at < this.from.getTime() || at >= this.to.getTime()) continue;
        if (this.consumed.has(`${record.gateway}|${record.operation}|${record.gatewayId}`)) continue;
        orphans.push(record);
      }
    }
    for (let start = 0; start < orphans.length; start += this.deps.options.batchSize) {
      const chunk = orphans.slice(start, start + this.deps.options.batchSize);
      const ids = [...new Set(chunk.map((record) => paymentIdOfReference(record.reference)).filter((id): id is string => id !== undefined))];
      const found = new Map((await paymentsByIds(this.deps.db, ids)).map((row) => [row.id, row]));
      for (const record of chunk) {
        this.tally.gatewayTransactionsChecked++;
        const paymentId = paymentIdOfReference(record.reference);
        const payment = paymentId ? found.get(paymentId) : undefined;
        const detections: Detection[] = [];
        if (!payment || gatewayReference(payment.id, record.gateway) !== record.reference || operationOf(payment) !== record.operation) {
          detections.push({
            type: FindingType.GATEWAY_TRANSACTION_UNKNOWN,
            severity: record.outcome === "succeeded" ? Severity.HIGH : Severity.LOW,
            subject: `gateway/${record.gateway}/${record.operation}/${record.gatewayId}`,
            paymentId: payment?.id ?? "",
            tenantId: payment?.tenantId ?? "",
            gateway: record.gateway,
            gatewayTransactionId: record.gatewayId,
            observedAmountMinor: record.amountMinor ?? 0n,
            observedCurrency: record.currency,
            detail: `${record.gateway} ${record.operation} ${record.gatewayId} (${record.gatewayStatus}, reference "${record.reference}") names no Cowrie payment`,
          });
        } else if (FINAL.has(payment.status)) {
          // A payment of another window: compare this one transaction with it.
          if (record.outcome === "succeeded") {
            if (payment.status !== PaymentStatus.SUCCEEDED) {
              detections.push({
                type: payment.failureCode === "booking_hold_not_held" ? FindingType.HOLD_EXPIRED_BUT_CAPTURED : FindingType.FAILED_BUT_GATEWAY_CAPTURED,
                severity: Severity.CRITICAL,
                subject: `payment/${payment.id}/gateway`,
                paymentId: payment.id,
                tenantId: payment.tenantId,
                gateway: record.gateway,
                gatewayTransactionId: record.gatewayId,
                observedAmountMinor: record.amountMinor ?? 0n,
                observedCurrency: record.currency,
                detail: `${PaymentStatus[payment.status]} (${payment.failureCode}) but ${record.gateway} ${record.operation} ${record.gatewayId} succeeded`,
              });
            } else if (payment.gateway !== record.gateway) {
              detections.push({
                type: FindingType.DUPLICATE_CAPTURE,
                severity: Severity.CRITICAL,
                subject: `payment/${payment.id}/capture`,
                paymentId: payment.id,
                tenantId: payment.tenantId,
                gateway: `${payment.gateway},${record.gateway}`,
                gatewayTransactionId: `${payment.gatewayTransactionId},${record.gatewayId}`,
                expectedAmountMinor: payment.amountMinor,
                observedAmountMinor: payment.amountMinor + (record.amountMinor ?? 0n),
                detail: `SUCCEEDED through ${payment.gateway}, and ${record.gateway} ${record.operation} ${record.gatewayId} captured it too`,
              });
            } else {
              detections.push(...this.compareAmounts(payment, record));
            }
          }
        }
        if (detections.length === 0) this.tally.gatewayTransactionsMatched++;
        metrics().reconChecked.inc({ side: "gateway", result: detections.length === 0 ? "matched" : "mismatched" });
        for (const detection of detections) await this.raise(detection);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Clearing-account transfers no payment accounts for

  private async checkClearingAccounts(): Promise<void> {
    const transfers: Transfer[] = [];
    for (const [name, connector] of this.deps.connectors) {
      for (const currency of connector.capabilities.currencies) {
        transfers.push(...(await this.history(clearingAccountId(name, currency))));
      }
    }
    if (transfers.length === 0) return;
    const keyOf = (transfer: Transfer) => (transfer.pendingId !== "" ? transfer.pendingId : transfer.id);
    let unmatched = transfers.filter((transfer) => !this.expectedLedgerIds.has(keyOf(transfer)));
    if (unmatched.length > 0) {
      // Settled late: the payment was created before the window.
      await this.expectPayments((after) => paymentKeysInWindow(this.deps.db, new Date(this.from.getTime() - LEDGER_LOOKBACK_MS), this.from, after, this.deps.options.batchSize));
      unmatched = unmatched.filter((transfer) => !this.expectedLedgerIds.has(keyOf(transfer)));
    }
    // Much later still: among the tenant's payments of the week before the transfer.
    for (const tenantId of new Set(unmatched.map((transfer) => transfer.metadata.tenant_id ?? ""))) {
      if (tenantId === "") continue;
      const at = Math.max(...unmatched.filter((transfer) => transfer.metadata.tenant_id === tenantId).map((transfer) => (transfer.createdAt ? timestampDate(transfer.createdAt).getTime() : this.to.getTime())));
      await this.expectPayments((after) => tenantPaymentKeys(this.deps.db, tenantId, new Date(at - TENANT_LOOKBACK_MS), new Date(at), after, this.deps.options.batchSize));
    }
    for (const transfer of transfers) {
      this.tally.ledgerTransfersChecked++;
      const matched = this.expectedLedgerIds.has(keyOf(transfer));
      metrics().reconChecked.inc({ side: "ledger", result: matched ? "matched" : "mismatched" });
      if (matched) {
        this.tally.ledgerTransfersMatched++;
        continue;
      }
      await this.raise({
        type: FindingType.LEDGER_TRANSFER_WITHOUT_PAYMENT,
        severity: Severity.HIGH,
        subject: `transfer/${transfer.id}`,
        tenantId: transfer.metadata.tenant_id ?? "",
        ledgerTransferId: transfer.id,
        observedAmountMinor: transfer.amountMinor,
        observedCurrency: transfer.currency,
        detail: `${TransferKind[transfer.kind]} ${transfer.id} of ${transfer.amountMinor} ${transfer.currency} from ${transfer.debitAccountId} to ${transfer.creditAccountId} belongs to no payment`,
      });
    }
  }

  private async expectPayments(page: (after: string) => Promise<{ id: string; tenantId: string; kind: number }[]>): Promise<void> {
    for (let after = ""; ;) {
      const keys = await page(after);
      for (const key of keys) for (const id of clearingIds(key)) this.expectedLedgerIds.add(id);
      if (keys.length < this.deps.options.batchSize) return;
      after = (keys.at(-1) as { id: string }).id;
    }
  }

  /** One clearing account's transfers committed in the window; none when the account does not exist. */
  private async history(accountId: string): Promise<Transfer[]> {
    const transfers: Transfer[] = [];
    for (let pageToken = ""; ;) {
      let response;
      try {
        response = await this.deps.ledger.getAccountHistory(
          { accountId, fromTime: timestampFromDate(this.from), toTime: timestampFromDate(this.to), pageSize: LEDGER_HISTORY_PAGE, pageToken },
          { timeoutMs: 30_000 },
        );
      } catch (error) {
        if (ConnectError.from(error).code === Code.NotFound) return transfers;
        throw error;
      }
      for (const entry of response.entries) if (entry.transfer) transfers.push(entry.transfer);
      if (response.nextPageToken === "") return transfers;
      pageToken = response.nextPageToken;
    }
  }
}

/** matched / checked over the three sides; 1 when nothing was compared. */
export function matchRate(tally: RunTally): { checked: number; matched: number; rate: number } {
  const checked = tally.paymentsChecked + tally.gatewayTransactionsChecked + tally.ledgerTransfersChecked;
  const matched = tally.paymentsMatched + tally.gatewayTransactionsMatched + tally.ledgerTransfersMatched;
  return { checked, matched, rate: checked === 0 ? 1 : matched / checked };
}
