// Outflow reservations: how daily limits stay exact under concurrency. Before a transfer out or a
// hold reaches the Ledger, one short transaction records the operation and adds its amount to
// the wallet's total for the UTC day with a conditional upsert; concurrent reservations
// serialize on that one row, so together they never pass the limit. A Ledger refusal gives the
// amount back, so a declined attempt does not eat the allowance.
import { eq, sql } from "drizzle-orm";
import { rowsOf, transact, type Db } from "../runtime/db.js";
import { INT64_MAX } from "../runtime/validate.js";
import { outflows } from "./schema.js";

/** Today in UTC, as the database sees it: every process agrees on the day. */
const TODAY = sql`(now() at time zone 'UTC')::date`;

export type Reservation =
  /** This call recorded the operation and counted its amount. */
  | "reserved"
  /** The operation was recorded before (a retry, or a concurrent attempt with the same key). */
  | "known"
  /** Counting it would pass the wallet's daily limit; nothing was written. */
  | "limit_exceeded";

class LimitExceeded extends Error {}

export interface OutflowRecord {
  walletId: string;
  amountMinor: bigint;
  /** The Refusal code when the Ledger refused the operation. */
  refused: string | null;
}

/** The recorded operation with this Ledger transfer id, if any. */
export async function findOutflow(db: Db, operationId: string): Promise<OutflowRecord | undefined> {
  const [row] = await db
    .select({ walletId: outflows.walletId, amountMinor: outflows.amountMinor, refused: outflows.refused })
    .from(outflows)
    .where(eq(outflows.operationId, operationId));
  return row;
}

/**
 * Records the operation and counts it against the wallet's day, in one transaction. With a
 * daily limit (> 0) the count is a conditional upsert: it only happens if the new total stays
 * within the limit. The total saturates at 2^63-1 instead of overflowing.
 */
export async function reserveOutflow(
  db: Db,
  reservation: { operationId: string; walletId: string; amountMinor: bigint; dailyLimitMinor: bigint },
): Promise<Reservation> {
  const { operationId, walletId, amountMinor, dailyLimitMinor } = reservation;
  if (dailyLimitMinor > 0n && amountMinor > dailyLimitMinor) return "limit_exceeded";
  try {
    // One statement, then the COMMIT (transact sends BEGIN with it): the operation's row, and
    // the day's total counted only if that row is new; a limit that refuses the count rolls the
    // row back too.
    return await transact(db, async (tx) => {
      const [outcome] = rowsOf<{ recorded: boolean; counted: boolean }>(
        await tx.execute(sql`
          with recorded as (
            insert into wallet.outflows (operation_id, wallet_id, day, amount_minor)
            values (${operationId}, ${walletId}, ${TODAY}, ${amountMinor})
            on conflict (operation_id) do nothing
            returning day),
          counted as (
            insert into wallet.outflow_totals (wallet_id, day, total_minor)
            select ${walletId}, day, ${amountMinor}::bigint from recorded
            on conflict (wallet_id, day) do update
              set total_minor = least(wallet.outflow_totals.total_minor::numeric + excluded.total_minor, ${INT64_MAX}::numeric)::bigint
              where ${dailyLimitMinor}::bigint = 0
                or wallet.outflow_totals.total_minor::numeric + excluded.total_minor <= ${dailyLimitMinor}::numeric
            returning total_minor)
          select exists (select 1 from recorded) as recorded, exists (select 1 from counted) as counted`),
      );
      if (!outcome?.recorded) return "known";
      // Recorded but not counted: the limit refused it. Throwing rolls the operation's row back.
      if (!outcome.counted) throw new LimitExceeded();
      return "reserved";
    });
  } catch (error) {
    if (error instanceof LimitExceeded) return "limit_exceeded";
    throw error;
  }
}

/**
 * Records that the Wallet itself refused the operation (frozen, closed, over a limit), unless
 * the operation was recorded first by a concurrent attempt. Returns whether this call decided it.
 * The amount is not counted against the day.
 */
export async function recordRefusedOutflow(
  db: Db,
  refused: { operationId: string; walletId: string; amountMinor: bigint; code: string },
): Promise<boolean> {
  const inserted = await transact(db, (tx) =>
    tx.execute(sql`
      insert into wallet.outflows (operation_id, wallet_id, day, amount_minor, refused)
      values (${refused.operationId}, ${refused.walletId}, ${TODAY}, ${refused.amountMinor}, ${refused.code})
      on conflict (operation_id) do nothing
      returning operation_id`),
  );
  return rowsOf(inserted).length > 0;
}

/** Gives a reserved amount back to its day; the operation's row is deleted, or kept stamped with `refused`. */
async function giveBack(db: Db, operationId: string, refused: string | undefined): Promise<void> {
  // Not bound to the call's deadline: the Ledger has decided, and the allowance must follow even
  // when the caller has stopped waiting.
  await db.transaction(async (tx) => {
    const released = rowsOf<{ wallet_id: string; day: string; amount_minor: unknown }>(
      await tx.execute(
        refused === undefined
          ? sql`delete from wallet.outflows where operation_id = ${operationId} and refused is null
                returning wallet_id, day::text as day, amount_minor`
          : sql`update wallet.outflows set refused = ${refused} where operation_id = ${operationId} and refused is null
                returning wallet_id, day::text as day, amount_minor`,
      ),
    );
    const row = released[0];
    if (!row) return;
    await tx.execute(sql`
      update wallet.outflow_totals set total_minor = greatest(total_minor - ${BigInt(row.amount_minor as string | bigint)}, 0)
      where wallet_id = ${row.wallet_id} and day = ${row.day}::date`);
  });
}

/**
 * The Ledger refused the operation, for good (it records refusals per id): keep the row, so a
 * retry still skips the wallet's own checks and gets the Ledger's recorded outcome, and give the
 * amount back. Only the first call that learns of the refusal gives it back.
 */
export function refuseOutflow(db: Db, operationId: string, refusalCode: string): Promise<void> {
  return giveBack(db, operationId, refusalCode);
}

/** Undoes a reservation this call made for an operation the Ledger says is not this one. */
export function releaseOutflow(db: Db, operationId: string): Promise<void> {
  return giveBack(db, operationId, undefined);
}

/** Minor units that have left each wallet today (UTC), holds included. */
export async function outflowToday(db: Db, walletIds: string[]): Promise<Map<string, bigint>> {
  if (walletIds.length === 0) return new Map();
  const rows = rowsOf<{ wallet_id: string; total_minor: unknown }>(
    await db.execute(sql`
      select wallet_id, total_minor from wallet.outflow_totals
      where day = ${TODAY} and wallet_id in (${sql.join(walletIds.map((id) => sql`${id}`), sql`, `)})`),
  );
  return new Map(rows.map((row) => [row.wallet_id, BigInt(row.total_minor as string | bigint)]));
}
