// The checks of a chaos run (bench/chaos.ts), made once the faults have stopped and the mesh has
// quiesced. Each violation is an anomaly of a named kind (the goal is zero of every kind), with
// the first few examples kept as evidence:
//   clients   every acknowledged payment present exactly once (by the tenant's Idempotency-Key,
//             sent as the payment's reference too) with the id and the final outcome the client
//             was told; a definite error left no payment; no payment nobody asked for; every
//             operation resolved (no key left without a definite answer after the faults);
//             replays answered the first outcome;
//   payments  every payment final, none flagged needs_reconciliation;
//   money     per payment: a SUCCEEDED one moved exactly its Ledger transfers (the payment leg and
//             fee leg, the pay-in's credit from the gateway's clearing account, the payout's hold
//             capture), a FAILED one moved nothing (holds released); every Ledger transfer on the
//             run's wallets belongs to a payment or a top-up; every wallet, fee and clearing
//             account holds exactly what the SUCCEEDED payments and top-ups say; per currency
//             the Ledger sums to zero; no constrained account negative; nothing left pending;
//   gateways  at most one successful charge or payout per payment at the simulator, exactly one
//             (of its amount, at the gateway the payment names) for a SUCCEEDED payment, none
//             succeeded or pending for a FAILED one, none for an unknown payment;
//   journal   Ledger VerifyJournal clean;
//   events    every outbox row and Ledger journal batch published, in edge.audit_events (once, by its primary key), in
//             edge.webhooks' inbox when its type is one the webhooks consumer takes, and every
//             payment.succeeded/payment.failed in risk.feedback's inbox; one terminal event per
//             final payment; no parked event;
//   recon     the Router's reconciliation over the run's window finds nothing (when it exists).
import type postgres from "postgres";
import { FindingKind, TransferKind, type VerifyJournalResponse } from "../gen/cowrie/ledger/v1/ledger_pb.js";
import { PaymentKind, PaymentStatus } from "../gen/cowrie/router/v1/router_pb.js";
import { batchEventId, LEDGER_BATCH_COMMITTED } from "../services/ledger/events.js";
import { gatewayReference } from "../services/router/gateway-flow.js";
import type { RecordView } from "../services/simulator/control.js";
import { SIMULATED_GATEWAYS } from "../services/simulator/core.js";
import { captureIdFor, clearingAccountId, feeAccountId, feeTransferIdFor, fundingAccountId, holdIdFor, releaseIdFor, transferIdFor } from "../services/wallet/service.js";
import type { ChaosWallet, Op } from "./chaos-workload.js";

/** The nemesis' faults (bench/chaos.ts), each injected at least once per run. */
export const FAULT_KINDS = [
  "kill:ledger",
  "kill:wallet",
  "kill:risk",
  "kill:router",
  "kill:edge",
  "pause:ledger",
  "postgres:restart",
  "redis:restart",
  "rabbitmq:drop",
  "rabbitmq:outage",
  "gateway:outage",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

const EXAMPLES_PER_KIND = 3;

export class Anomalies {
  readonly counts: Record<string, number> = {};
  readonly examples: Record<string, string[]> = {};

  add(kind: string, example: string, count = 1): void {
    this.counts[kind] = (this.counts[kind] ?? 0) + count;
    const list = (this.examples[kind] ??= []);
    if (list.length < EXAMPLES_PER_KIND) list.push(example);
  }

  /** Evidence for a kind counted elsewhere. */
  example(kind: string, example: string): void {
    const list = (this.examples[kind] ??= []);
    if (list.length < EXAMPLES_PER_KIND) list.push(example);
  }

  get total(): number {
    return Object.values(this.counts).reduce((sum, count) => sum + count, 0);
  }
}

interface PaymentRow {
  id: string;
  kind: number;
  status: number;
  amount_minor: string;
  fee_minor: string;
  currency: string;
  source_wallet_id: string;
  destination_wallet_id: string;
  reference: string;
  gateway: string;
  needs_reconciliation: boolean;
  refunded_minor: string;
  refunded_payment_id: string | null;
}

interface TransferRow {
  id: string;
  kind: number;
  debit_account_id: string;
  credit_account_id: string;
  amount_minor: string;
  currency: string;
}

interface AccountRow {
  id: string;
  currency: string;
  debits_must_not_exceed_credits: boolean;
  credits_must_not_exceed_debits: boolean;
  debits_posted: string;
  credits_posted: string;
  debits_pending: string;
  credits_pending: string;
}

const FINAL = new Set<number>([PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED]);
const statusName = (status: number): string => PaymentStatus[status] ?? String(status);
/** Services that write an outbox table; the Ledger publishes its journal instead (ledgerEvents). */
const OUTBOX_SOURCES = ["router", "wallet", "risk"] as const;

interface EventRow {
  id: string;
  event_type: string;
  subject: string;
  published: boolean;
}

/** Every event a service published or must publish: outbox rows, or the Ledger's journal batches. */
async function eventsOf(sql: postgres.Sql, source: "ledger" | (typeof OUTBOX_SOURCES)[number]): Promise<EventRow[]> {
  if (source !== "ledger") {
    return sql<EventRow[]>`select id::text as id, event_type, subject, published_at is not null as published from ${sql(source)}.outbox`;
  }
  const batches = await sql<{ batch: string; hash: Uint8Array; published: boolean }[]>`
    select b.batch::text as batch, b.hash, b.batch <= c.last_batch as published from ledger.journal_batches b cross join ledger.relay_cursor c`;
  return batches.map((row) => ({ id: batchEventId(row.hash), event_type: LEDGER_BATCH_COMMITTED, subject: `batch/${row.batch}`, published: row.published }));
}

/** Events the Edge's webhooks consumer takes (its binding keys). */
const forWebhooks = (event: EventRow): boolean => /^(payment|risk|wallet|reconciliation)\./.test(event.event_type);

async function eventIds(sql: postgres.Sql, query: postgres.PendingQuery<{ id: string }[]>): Promise<Set<string>> {
  return new Set((await query).map((row) => row.id));
}

/** Payments, transfers and accounts of the run, read once after quiescence. */
export async function readPayments(sql: postgres.Sql, tenantId: string): Promise<PaymentRow[]> {
  return sql<PaymentRow[]>`
    select id, kind, status, amount_minor::text, fee_minor::text, currency, source_wallet_id, destination_wallet_id, reference, gateway, needs_reconciliation,
           refunded_minor::text, refunded_payment_id
    from router.payments where tenant_id = ${tenantId}`;
}

/** What quiescence waits for: payments not final, and events not yet everywhere they must be. */
export async function backlog(sql: postgres.Sql, tenantId: string): Promise<Record<string, number>> {
  const [payments] = await sql<{ count: number }[]>`select count(*)::int as count from router.payments where tenant_id = ${tenantId} and status not in (4, 5, 6)`;
  const result: Record<string, number> = { payments_not_final: payments?.count ?? 0 };
  const audited = await eventIds(sql, sql`select event_id as id from edge.audit_events`);
  const inWebhooks = await eventIds(sql, sql`select event_id as id from edge.inbox where consumer = 'edge.webhooks'`);
  for (const source of ["ledger", ...OUTBOX_SOURCES] as const) {
    const events = await eventsOf(sql, source);
    result[`${source}_events_unpublished`] = events.filter((event) => !event.published).length;
    result[`${source}_events_not_audited`] = events.filter((event) => !audited.has(event.id)).length;
    // The webhooks consumer retries on its own schedule (1 s, 5 s, 30 s...): wait for it too.
    result[`${source}_events_not_in_webhooks_inbox`] = events.filter((event) => forWebhooks(event) && !inWebhooks.has(event.id)).length;
  }
  const [feedback] = await sql<{ count: number }[]>`
    select count(*)::int as count from router.outbox o
    where o.event_type in ('payment.succeeded', 'payment.failed')
      and not exists (select 1 from risk.inbox i where i.consumer = 'risk.feedback' and i.event_id = o.id::text)`;
  result.feedback_not_applied = feedback?.count ?? 0;
  const [webhooks] = await sql<{ count: number }[]>`select count(*)::int as count from edge.webhook_deliveries where tenant_id = ${tenantId} and status = 1`;
  result.webhooks_pending = webhooks?.count ?? 0;
  return result;
}

export interface CheckInput {
  sql: postgres.Sql;
  tenantId: string;
  ops: readonly Op[];
  wallets: readonly ChaosWallet[];
  /** Top-ups made in setup (before any fault), by wallet. */
  funded: ReadonlyMap<string, bigint>;
  records: readonly RecordView[];
  verify: VerifyJournalResponse | undefined;
  /** The run's webhook endpoint and what it received. */
  webhooks: { endpointId: string; since: Date; received: ReadonlyMap<string, number>; badSignatures: number } | undefined;
}

export async function checkRun(input: CheckInput, anomalies: Anomalies): Promise<{ payments: number; transfers: number; events: number; webhookRedeliveries: number }> {
  const { sql, tenantId, ops, wallets, funded } = input;
  const payments = await readPayments(sql, tenantId);
  checkClients(ops, payments, anomalies);

  for (const payment of payments) {
    if (!FINAL.has(payment.status)) anomalies.add(`payment_not_final`, `${payment.id} ${statusName(payment.status)}`);
    if (payment.needs_reconciliation) anomalies.add("payment_needs_reconciliation", payment.id);
  }

  const transfers = await sql<TransferRow[]>`select id, kind, debit_account_id, credit_account_id, amount_minor::text, currency from ledger.transfers`;
  const accounts = await sql<AccountRow[]>`
    select id, currency, debits_must_not_exceed_credits, credits_must_not_exceed_debits,
           debits_posted::text, credits_posted::text, debits_pending::text, credits_pending::text
    from ledger.accounts`;
  checkMoney({ tenantId, payments, transfers, accounts, wallets, funded }, anomalies);
  checkGateways(payments, input.records, anomalies);

  if (!input.verify) anomalies.add("journal_not_verified", "VerifyJournal did not answer");
  else for (const finding of input.verify.findings) anomalies.add(`journal_${(FindingKind[finding.kind] ?? String(finding.kind)).toLowerCase()}`, finding.detail);

  const events = await checkEvents(sql, payments, anomalies);
  const webhookRedeliveries = input.webhooks ? await checkWebhooks(sql, tenantId, input.webhooks, anomalies) : 0;
  return { payments: payments.length, transfers: transfers.length, events, webhookRedeliveries };
}

function checkClients(ops: readonly Op[], payments: readonly PaymentRow[], anomalies: Anomalies): void {
  const byReference = new Map<string, PaymentRow[]>();
  for (const payment of payments) byReference.set(payment.reference, [...(byReference.get(payment.reference) ?? []), payment]);
  const keys = new Set(ops.map((op) => op.key));
  for (const payment of payments) if (!keys.has(payment.reference)) anomalies.add("payment_nobody_asked_for", `${payment.id} reference ${payment.reference}`);
  for (const op of ops) {
    const rows = byReference.get(op.key) ?? [];
    if (rows.length > 1) anomalies.add("payment_duplicated", `key ${op.key}: ${rows.map((row) => row.id).join(", ")}`);
    for (const contradiction of op.contradictions) anomalies.add("client_contradiction", `key ${op.key} (${op.paymentId}): ${contradiction}`);
    if (op.outcome === "ok") {
      const row = rows.find((candidate) => candidate.id === op.paymentId);
      if (rows.length === 0) {
        anomalies.add("acknowledged_payment_lost", `key ${op.key}: told ${op.paymentId} ${op.toldStatus}, not in router.payments`);
        continue;
      }
      if (!row) {
        anomalies.add("acknowledged_payment_wrong_id", `key ${op.key}: told ${op.paymentId}, stored ${rows.map((candidate) => candidate.id).join(", ")}`);
        continue;
      }
      if (BigInt(row.amount_minor) !== op.amountMinor || row.currency !== op.currency) {
        anomalies.add("payment_fields_differ", `${row.id}: ${row.amount_minor} ${row.currency}, asked ${op.amountMinor} ${op.currency}`);
      }
      if (op.toldFinal !== undefined && statusName(row.status) !== op.toldFinal) {
        anomalies.add("told_outcome_changed", `${row.id} (${op.kind}, key ${op.key}): told ${op.toldFinal}, now ${statusName(row.status)}`);
      }
    } else if (op.outcome === "error") {
      // Every request of the workload is valid: a definite error is a bug (except a refund of more
      // than is left, which is refused), and must have left nothing.
      if (!(op.kind === "refund" && op.errorCode === "failed_precondition")) anomalies.add(`definite_error_${(op.errorCode ?? "unknown").toLowerCase()}`, `key ${op.key} (${op.kind}) after ${op.attempts} attempts: ${op.errorMessage}`);
      if (rows.length > 0) anomalies.add("error_but_recorded", `key ${op.key}: told ${op.errorCode}, stored ${rows.map((row) => `${row.id} ${statusName(row.status)}`).join(", ")}`);
    } else {
      anomalies.add("operation_unresolved", `key ${op.key} (${op.kind}): no definite answer in ${op.attempts} attempts (${Object.entries(op.retried).map(([code, count]) => `${code} ${count}`).join(", ")}); stored: ${rows.map((row) => `${row.id} ${statusName(row.status)}`).join(", ") || "nothing"}`);
    }
  }
}

function checkMoney(
  input: { tenantId: string; payments: readonly PaymentRow[]; transfers: readonly TransferRow[]; accounts: readonly AccountRow[]; wallets: readonly ChaosWallet[]; funded: ReadonlyMap<string, bigint> },
  anomalies: Anomalies,
): void {
  const { tenantId, payments, transfers, accounts, wallets, funded } = input;
  const transferById = new Map(transfers.map((transfer) => [transfer.id, transfer]));
  const walletIds = new Set(wallets.map((wallet) => wallet.id));
  const attributable = new Set<string>();
  /** Expected posted balance (credits - debits) of every account the run's payments touch. */
  const expected = new Map<string, bigint>();
  const move = (debit: string, credit: string, amount: bigint): void => {
    expected.set(debit, (expected.get(debit) ?? 0n) - amount);
    expected.set(credit, (expected.get(credit) ?? 0n) + amount);
  };
  for (const wallet of wallets) move(fundingAccountId(wallet.currency), wallet.id, funded.get(wallet.id) ?? 0n);

  const expectTransfer = (payment: PaymentRow, id: string, debit: string, credit: string, amount: bigint): void => {
    const transfer = transferById.get(id);
    if (!transfer) {
      anomalies.add("succeeded_without_transfer", `${payment.id} (${PaymentKind[payment.kind]}): no Ledger transfer ${id}`);
      return;
    }
    if (transfer.debit_account_id !== debit || transfer.credit_account_id !== credit || BigInt(transfer.amount_minor) !== amount) {
      anomalies.add("transfer_differs", `${payment.id}: ${id} ${transfer.debit_account_id} -> ${transfer.credit_account_id} ${transfer.amount_minor}, expected ${debit} -> ${credit} ${amount}`);
    }
  };
  const expectNone = (payment: PaymentRow, ids: readonly string[]): void => {
    for (const id of ids) {
      if (transferById.has(id)) anomalies.add("failed_payment_moved_money", `${payment.id} (${PaymentKind[payment.kind]}, ${statusName(payment.status)}): Ledger transfer ${id} exists`);
    }
  };

  /** A payout or a refund of a pay-in: the money is held for a gateway, and captured to its clearing account when it pays. */
  const checkHeldPayment = (payment: PaymentRow, succeeded: boolean): void => {
    const amount = BigInt(payment.amount_minor);
    const holds = SIMULATED_GATEWAYS.map((gateway) => holdIdFor(tenantId, `router:${payment.id}:hold:${gateway}`));
    for (const hold of holds) for (const id of [hold, captureIdFor(hold), releaseIdFor(hold), `expire:${hold}`]) attributable.add(id);
    const captures = holds.map(captureIdFor).filter((id) => transferById.has(id));
    if (succeeded) {
      const clearing = clearingAccountId(payment.gateway, payment.currency);
      if (captures.length !== 1) anomalies.add(captures.length === 0 ? "succeeded_without_transfer" : "hold_captured_twice", `${payment.id}: ${captures.length} hold captures`);
      const expectedCapture = captureIdFor(holdIdFor(tenantId, `router:${payment.id}:hold:${payment.gateway}`));
      expectTransfer(payment, expectedCapture, payment.source_wallet_id, clearing, amount);
      move(payment.source_wallet_id, clearing, amount);
    } else {
      expectNone(payment, holds.map(captureIdFor));
    }
  };

  // A refunded payment's refunded_minor is what its SUCCEEDED refunds returned (failed ones gave theirs back).
  const refundedBy = new Map<string, bigint>();
  for (const payment of payments) {
    if (payment.kind === PaymentKind.REFUND && payment.status === PaymentStatus.SUCCEEDED && payment.refunded_payment_id) {
      refundedBy.set(payment.refunded_payment_id, (refundedBy.get(payment.refunded_payment_id) ?? 0n) + BigInt(payment.amount_minor));
    }
  }
  for (const payment of payments) {
    const refunded = refundedBy.get(payment.id) ?? 0n;
    if (BigInt(payment.refunded_minor) !== refunded) anomalies.add("refunded_amount_mismatch", `${payment.id}: refunded_minor ${payment.refunded_minor}, its SUCCEEDED refunds ${refunded}`);
    if (refunded > BigInt(payment.amount_minor)) anomalies.add("refunded_more_than_paid", `${payment.id}: ${refunded} of ${payment.amount_minor}`);
  }

  for (const payment of payments) {
    const amount = BigInt(payment.amount_minor);
    const fee = BigInt(payment.fee_minor);
    const succeeded = payment.status === PaymentStatus.SUCCEEDED;
    const main = transferIdFor(tenantId, `router:${payment.id}`);
    const review = holdIdFor(tenantId, `router:${payment.id}:review`);
    const reviewLegs = [review, captureIdFor(review), releaseIdFor(review), `expire:${review}`];
    for (const id of [main, feeTransferIdFor(main), ...reviewLegs]) attributable.add(id);
    switch (payment.kind) {
      case PaymentKind.REFUND:
      case PaymentKind.INTERNAL: {
        // A refund of a pay-in goes back through the gateway; one of an internal payment moves
        // money between wallets as an internal payment does.
        if (payment.destination_wallet_id === "") {
          checkHeldPayment(payment, succeeded);
          break;
        }
        if (succeeded) {
          expectTransfer(payment, main, payment.source_wallet_id, payment.destination_wallet_id, amount - fee);
          if (fee > 0n) expectTransfer(payment, feeTransferIdFor(main), payment.source_wallet_id, feeAccountId(tenantId, payment.currency), fee);
          move(payment.source_wallet_id, payment.destination_wallet_id, amount - fee);
          if (fee > 0n) move(payment.source_wallet_id, feeAccountId(tenantId, payment.currency), fee);
        } else {
          expectNone(payment, [main, feeTransferIdFor(main), captureIdFor(review)]);
        }
        break;
      }
      case PaymentKind.PAY_IN: {
        const clearing = clearingAccountId(payment.gateway, payment.currency);
        if (succeeded) {
          expectTransfer(payment, main, clearing, payment.destination_wallet_id, amount);
          move(clearing, payment.destination_wallet_id, amount);
        } else {
          expectNone(payment, [main]);
        }
        break;
      }
      case PaymentKind.PAYOUT:
        checkHeldPayment(payment, succeeded);
        break;
      default:
        break;
    }
  }

  // Every transfer on the run's wallets belongs to a payment or to a top-up.
  for (const transfer of transfers) {
    const touches = walletIds.has(transfer.debit_account_id) || walletIds.has(transfer.credit_account_id);
    if (!touches || attributable.has(transfer.id)) continue;
    if (transfer.debit_account_id.startsWith("funding:") && transfer.kind === TransferKind.POSTED) continue;
    anomalies.add("transfer_without_payment", `${transfer.id} ${transfer.debit_account_id} -> ${transfer.credit_account_id} ${transfer.amount_minor} ${transfer.currency}`);
  }

  // Balances: every account the model knows, and the Ledger as a whole.
  const accountById = new Map(accounts.map((account) => [account.id, account]));
  for (const [id, balance] of expected) {
    const account = accountById.get(id);
    const posted = account ? BigInt(account.credits_posted) - BigInt(account.debits_posted) : 0n;
    if (posted !== balance) anomalies.add("balance_mismatch", `${id}: Ledger ${posted}, payments and top-ups say ${balance}`);
  }
  const sums = new Map<string, { posted: bigint; debitsPending: bigint; creditsPending: bigint }>();
  for (const account of accounts) {
    const sum = sums.get(account.currency) ?? { posted: 0n, debitsPending: 0n, creditsPending: 0n };
    sum.posted += BigInt(account.credits_posted) - BigInt(account.debits_posted);
    sum.debitsPending += BigInt(account.debits_pending);
    sum.creditsPending += BigInt(account.credits_pending);
    sums.set(account.currency, sum);
    const debits = BigInt(account.debits_posted) + BigInt(account.debits_pending);
    const credits = BigInt(account.credits_posted) + BigInt(account.credits_pending);
    if (account.debits_must_not_exceed_credits && debits > BigInt(account.credits_posted)) anomalies.add("constrained_account_negative", `${account.id}: debits ${debits} > credits ${account.credits_posted}`);
    if (account.credits_must_not_exceed_debits && credits > BigInt(account.debits_posted)) anomalies.add("constrained_account_negative", `${account.id}: credits ${credits} > debits ${account.debits_posted}`);
    if (BigInt(account.debits_pending) !== 0n || BigInt(account.credits_pending) !== 0n) {
      anomalies.add("money_left_pending", `${account.id}: pending debits ${account.debits_pending}, credits ${account.credits_pending}`);
    }
  }
  for (const [currency, sum] of sums) {
    if (sum.posted !== 0n || sum.debitsPending !== sum.creditsPending) {
      anomalies.add("money_not_conserved", `${currency}: posted balances sum to ${sum.posted}; pending debits ${sum.debitsPending}, credits ${sum.creditsPending}`);
    }
  }
}

function checkGateways(payments: readonly PaymentRow[], records: readonly RecordView[], anomalies: Anomalies): void {
  const byReference = new Map<string, RecordView[]>();
  for (const record of records) byReference.set(`${record.operation}/${record.reference}`, [...(byReference.get(`${record.operation}/${record.reference}`) ?? []), record]);
  const claimed = new Set<string>();
  for (const payment of payments) {
    if (payment.kind !== PaymentKind.PAY_IN && payment.kind !== PaymentKind.PAYOUT) continue;
    const operation = payment.kind === PaymentKind.PAY_IN ? "charge" : "payout";
    const found = SIMULATED_GATEWAYS.flatMap((gateway) => {
      const key = `${operation}/${gatewayReference(payment.id, gateway)}`;
      claimed.add(key);
      return byReference.get(key) ?? [];
    });
    const succeeded = found.filter((record) => record.status === "succeeded");
    const pending = found.filter((record) => record.status === "pending");
    if (succeeded.length > 1) anomalies.add("gateway_captured_twice", `${payment.id}: ${succeeded.map((record) => `${record.gateway} ${record.gatewayId}`).join(", ")}`);
    if (payment.status === PaymentStatus.SUCCEEDED) {
      if (succeeded.length === 0) anomalies.add("succeeded_without_gateway_capture", `${payment.id} (${operation} via ${payment.gateway}): ${found.map((record) => `${record.gateway} ${record.status}`).join(", ") || "no record"}`);
      for (const record of succeeded) {
        if (record.amountMinor !== payment.amount_minor || record.currency !== payment.currency || record.gateway !== payment.gateway) {
          anomalies.add("gateway_capture_differs", `${payment.id}: ${record.gateway} ${record.amountMinor} ${record.currency}; payment ${payment.gateway} ${payment.amount_minor} ${payment.currency}`);
        }
      }
    } else {
      if (succeeded.length > 0) anomalies.add("failed_but_gateway_captured", `${payment.id} (${statusName(payment.status)}): ${succeeded.map((record) => `${record.gateway} ${record.gatewayId}`).join(", ")}`);
      if (pending.length > 0) anomalies.add("failed_but_gateway_pending", `${payment.id} (${statusName(payment.status)}): ${pending.map((record) => record.gateway).join(", ")}`);
    }
  }
  // Refunds of pay-ins: what the gateway returned of each charge is what the SUCCEEDED refunds through it say.
  const refundedAtGateway = new Map<string, bigint>();
  for (const record of records) {
    if (record.operation === "refund" && record.status === "succeeded" && record.parentReference) {
      refundedAtGateway.set(record.parentReference, (refundedAtGateway.get(record.parentReference) ?? 0n) + BigInt(record.amountMinor));
    }
  }
  const byId = new Map(payments.map((payment) => [payment.id, payment]));
  const refundedInCowrie = new Map<string, bigint>();
  for (const payment of payments) {
    if (payment.kind !== PaymentKind.REFUND || payment.destination_wallet_id !== "" || !payment.refunded_payment_id) continue;
    const original = byId.get(payment.refunded_payment_id);
    if (!original) continue;
    const charge = gatewayReference(original.id, original.gateway);
    if (payment.status === PaymentStatus.SUCCEEDED) refundedInCowrie.set(charge, (refundedInCowrie.get(charge) ?? 0n) + BigInt(payment.amount_minor));
    else refundedInCowrie.set(charge, refundedInCowrie.get(charge) ?? 0n);
  }
  for (const charge of new Set([...refundedAtGateway.keys(), ...refundedInCowrie.keys()])) {
    const there = refundedAtGateway.get(charge) ?? 0n;
    const here = refundedInCowrie.get(charge) ?? 0n;
    if (there !== here) anomalies.add("gateway_refunds_differ", `charge ${charge}: the gateway refunded ${there}, SUCCEEDED refunds say ${here}`);
  }

  for (const record of records) {
    if (record.operation === "refund" || claimed.has(`${record.operation}/${record.reference}`)) continue;
    if (record.status === "succeeded") anomalies.add("gateway_capture_without_payment", `${record.gateway} ${record.operation} ${record.reference} ${record.amountMinor}`);
  }
}

async function checkEvents(sql: postgres.Sql, payments: readonly PaymentRow[], anomalies: Anomalies): Promise<number> {
  let total = 0;
  const published = new Set<string>();
  const audited = await eventIds(sql, sql`select event_id as id from edge.audit_events`);
  const inWebhooks = await eventIds(sql, sql`select event_id as id from edge.inbox where consumer = 'edge.webhooks'`);
  const inFeedback = await eventIds(sql, sql`select event_id as id from risk.inbox where consumer = 'risk.feedback'`);
  for (const source of ["ledger", ...OUTBOX_SOURCES] as const) {
    const rows = await eventsOf(sql, source);
    total += rows.length;
    for (const row of rows) {
      published.add(row.id);
      const what = `${source} ${row.event_type} ${row.subject} (${row.id})`;
      if (!row.published) anomalies.add("event_unpublished", what);
      if (!audited.has(row.id)) anomalies.add("event_not_audited", what);
      if (forWebhooks(row) && !inWebhooks.has(row.id)) anomalies.add("event_not_in_webhooks_inbox", what);
      if ((row.event_type === "payment.succeeded" || row.event_type === "payment.failed") && !inFeedback.has(row.id)) anomalies.add("event_not_in_feedback_inbox", what);
    }
  }
  const auditRows = await sql<{ event_id: string; type: string; subject: string }[]>`select event_id, type, subject from edge.audit_events`;
  for (const row of auditRows) if (!published.has(row.event_id)) anomalies.add("audit_event_without_outbox_row", `${row.type} ${row.subject} (${row.event_id})`);
  for (const [schema, consumers] of [["edge", "edge.audit, edge.webhooks"], ["risk", "risk.feedback"]] as const) {
    const parked = await sql<{ consumer: string; event_type: string; reason: string }[]>`select consumer, event_type, reason from ${sql(schema)}.parked_events where replayed_at is null`;
    for (const row of parked) anomalies.add("event_parked", `${row.consumer} (${consumers}) ${row.event_type}: ${row.reason}`);
  }
  // One terminal event per final payment, none for an unfinished one.
  const terminal = await sql<{ subject: string; event_type: string; count: number }[]>`
    select subject, event_type, count(*)::int as count from router.outbox
    where event_type in ('payment.succeeded', 'payment.failed', 'payment.canceled') group by subject, event_type`;
  const terminalBySubject = new Map<string, { type: string; count: number }[]>();
  for (const row of terminal) terminalBySubject.set(row.subject, [...(terminalBySubject.get(row.subject) ?? []), { type: row.event_type, count: row.count }]);
  for (const payment of payments) {
    const events = terminalBySubject.get(`payment/${payment.id}`) ?? [];
    const count = events.reduce((sum, event) => sum + event.count, 0);
    if (!FINAL.has(payment.status)) continue;
    const expectedType = `payment.${statusName(payment.status).toLowerCase()}`;
    if (count === 0) anomalies.add("final_payment_without_event", `${payment.id} ${statusName(payment.status)}`);
    else if (count > 1 || events[0]?.type !== expectedType) anomalies.add("final_payment_events_wrong", `${payment.id} ${statusName(payment.status)}: ${events.map((event) => `${event.type} x${event.count}`).join(", ")}`);
  }
  return total;
}

/**
 * Every tenant event from when the endpoint existed (types the webhooks consumer takes) has one
 * delivery to it, DELIVERED, and the receiver saw it (at least once: answers how many more times);
 * every signature verified; nothing received that the outboxes do not hold.
 */
async function checkWebhooks(
  sql: postgres.Sql,
  tenantId: string,
  webhooks: { endpointId: string; since: Date; received: ReadonlyMap<string, number>; badSignatures: number },
  anomalies: Anomalies,
): Promise<number> {
  if (webhooks.badSignatures > 0) anomalies.add("webhook_bad_signature", `${webhooks.badSignatures} deliveries failed verification`, webhooks.badSignatures);
  const expected = new Set<string>();
  for (const source of ["router", "wallet", "risk"] as const) {
    const rows = await sql<{ id: string; event_type: string; subject: string; status: number | null }[]>`
      select o.id::text as id, o.event_type, o.subject, d.status
      from ${sql(source)}.outbox o
      left join edge.webhook_deliveries d on d.endpoint_id = ${webhooks.endpointId} and d.event_id = o.id::text
      where o.tenant_id = ${tenantId} and o.created_at >= ${webhooks.since}
        and o.event_type ~ '^(payment|risk|wallet|reconciliation)[.]'`;
    for (const row of rows) {
      expected.add(row.id);
      const what = `${row.event_type} ${row.subject} (${row.id})`;
      if (row.status === null) anomalies.add("webhook_not_enqueued", what);
      else if (row.status !== 2) anomalies.add("webhook_not_delivered", `${what}: delivery status ${row.status}`);
      if (!webhooks.received.has(row.id)) anomalies.add("webhook_not_received", what);
    }
  }
  let redeliveries = 0;
  for (const [eventId, count] of webhooks.received) {
    redeliveries += count - 1;
    if (!expected.has(eventId)) {
      const [known] = await sql<{ count: number }[]>`select count(*)::int as count from edge.webhook_deliveries where event_id = ${eventId}`;
      if (!known?.count) anomalies.add("webhook_unknown_event", eventId);
    }
  }
  return redeliveries;
}
