// Property tests of the Ledger's decision logic: random accounts and random batches of
// transfers (posted, pending, post, void and expire; linked chains; retries of earlier ids;
// conflicting retries), applied to an in-memory store the way the database applies them, with
// the invariants checked after every batch. Also the journal hash, pinned.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { CreateTransferResult, TransferKind } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import {
  applyToTotals,
  assertConserved,
  chainsOf,
  PendingStatus,
  planTransfers,
  type AccountState,
  type PendingState,
  type StoredOutcome,
  type TransferInput,
} from "./engine.js";
import { batchHash, type JournalRow } from "./journal.js";

const CURRENCIES = ["NGN", "KES"];
const START_MS = 1_700_000_000_000;

interface Store {
  accounts: Map<string, AccountState>;
  pendings: Map<string, PendingState>;
  stored: Map<string, StoredOutcome>;
  journal: TransferInput[];
  nowMs: number;
}

function newStore(count: number): Store {
  const accounts = new Map<string, AccountState>();
  for (let index = 0; index < count; index++) {
    const id = `acc-${index}`;
    accounts.set(id, {
      id,
      currency: CURRENCIES[index % CURRENCIES.length] as string,
      // Accounts 0 and 1 are unconstrained sources of money; the rest may not go negative or
      // (every fifth) may not take more credit than debit.
      debitsMustNotExceedCredits: index >= 2 && index % 5 !== 4,
      creditsMustNotExceedDebits: index >= 2 && index % 5 === 4,
      closed: false,
      debitsPosted: 0n,
      creditsPosted: 0n,
      debitsPending: 0n,
      creditsPending: 0n,
    });
  }
  return { accounts, pendings: new Map(), stored: new Map(), journal: [], nowMs: START_MS };
}

/** What the database does with a plan: store outcomes, pending states and new totals. */
function commit(store: Store, batch: TransferInput[]) {
  const pendings = new Map<string, PendingState>();
  for (const transfer of batch) {
    const target = store.stored.get(transfer.pendingId);
    if (target?.kind === "created") {
      pendings.set(transfer.pendingId, store.pendings.get(transfer.pendingId) ?? { transfer: target.transfer, status: undefined, expiresAtMs: undefined });
    }
  }
  const plan = planTransfers(batch, store.accounts, pendings, store.stored, store.nowMs);
  for (const transfer of plan.created) {
    store.journal.push(transfer);
    store.stored.set(transfer.id, { kind: "created", transfer, sequence: BigInt(store.journal.length) });
  }
  for (const { transfer, result } of plan.failed) store.stored.set(transfer.id, { kind: "failed", transfer, result });
  for (const [id, account] of plan.changed) store.accounts.set(id, account);
  for (const [id, pending] of plan.pendingChanges) store.pendings.set(id, pending);
  store.nowMs += 1000;
  return plan;
}

function transfer(fields: Partial<TransferInput> & Pick<TransferInput, "id">): TransferInput {
  return {
    kind: TransferKind.POSTED, debitAccountId: "", creditAccountId: "", amountMinor: 0n, currency: "", code: 1,
    reference: "", metadata: {}, linked: false, pendingId: "", timeoutSeconds: 0, ...fields,
  };
}

const itemArbitrary = (accountCount: number) =>
  fc.record({
    id: fc.integer({ min: 0, max: 40 }).map((n) => `tr-${n}`),
    kind: fc.constantFrom(TransferKind.POSTED, TransferKind.POSTED, TransferKind.PENDING, TransferKind.POST_PENDING, TransferKind.VOID_PENDING),
    debit: fc.integer({ min: 0, max: accountCount }),
    credit: fc.integer({ min: 0, max: accountCount }),
    amountMinor: fc.bigInt({ min: 1n, max: 5_000n }),
    partial: fc.boolean(),
    currency: fc.constantFrom(...CURRENCIES),
    pending: fc.integer({ min: 0, max: 40 }).map((n) => `tr-${n}`),
    timeoutSeconds: fc.constantFrom(0, 0, 2, 30),
    linked: fc.boolean(),
  });

/** Random batches with distinct ids and closed chains, as validation guarantees. */
function batchArbitrary(accountCount: number) {
  return fc.array(itemArbitrary(accountCount), { minLength: 1, maxLength: 8 }).map((raw) => {
    const seen = new Set<string>();
    const batch: TransferInput[] = [];
    for (const item of raw) {
      if (seen.has(item.id) || item.debit === item.credit) continue;
      seen.add(item.id);
      const resolving = item.kind === TransferKind.POST_PENDING || item.kind === TransferKind.VOID_PENDING;
      batch.push(transfer(resolving
        ? { id: item.id, kind: item.kind, pendingId: item.pending, amountMinor: item.kind === TransferKind.POST_PENDING && item.partial ? item.amountMinor : 0n, linked: item.linked }
        : {
            id: item.id,
            kind: item.kind,
            // Index accountCount names an account that does not exist.
            debitAccountId: `acc-${item.debit}`,
            creditAccountId: `acc-${item.credit}`,
            amountMinor: item.amountMinor,
            currency: item.currency,
            timeoutSeconds: item.kind === TransferKind.PENDING ? item.timeoutSeconds : 0,
            linked: item.linked,
          }));
    }
    const last = batch[batch.length - 1];
    if (last) batch[batch.length - 1] = { ...last, linked: false };
    return batch;
  });
}

function scenario(maxBatches: number) {
  return fc
    .integer({ min: 2, max: 8 })
    .chain((accountCount) => fc.tuple(fc.constant(accountCount), fc.array(batchArbitrary(accountCount), { minLength: 1, maxLength: maxBatches })));
}

function checkInvariants(store: Store): void {
  const totals = new Map<string, bigint>();
  for (const account of store.accounts.values()) {
    const drift = account.debitsPosted + account.debitsPending - account.creditsPosted - account.creditsPending;
    totals.set(account.currency, (totals.get(account.currency) ?? 0n) + drift);
    if (account.debitsMustNotExceedCredits) assert.ok(account.debitsPosted + account.debitsPending <= account.creditsPosted, `${account.id} overdrawn`);
    if (account.creditsMustNotExceedDebits) assert.ok(account.creditsPosted + account.creditsPending <= account.debitsPosted, `${account.id} over-credited`);
    for (const value of [account.debitsPosted, account.creditsPosted, account.debitsPending, account.creditsPending]) assert.ok(value >= 0n);
  }
  for (const [currency, drift] of totals) assert.equal(drift, 0n, `${currency} not conserved`);

  // Balances are exactly the replay of the journal (what the verifier does).
  const replayed = new Map<string, { debitsPosted: bigint; creditsPosted: bigint; debitsPending: bigint; creditsPending: bigint }>();
  const amounts = new Map<string, bigint>();
  const resolutions = new Map<string, number>();
  for (const entry of store.journal) {
    if (entry.kind === TransferKind.PENDING) amounts.set(entry.id, entry.amountMinor);
    if (entry.pendingId) resolutions.set(entry.pendingId, (resolutions.get(entry.pendingId) ?? 0) + 1);
    for (const side of ["debit", "credit"] as const) {
      const id = side === "debit" ? entry.debitAccountId : entry.creditAccountId;
      const current = replayed.get(id) ?? { debitsPosted: 0n, creditsPosted: 0n, debitsPending: 0n, creditsPending: 0n };
      applyToTotals(current, entry, side, amounts.get(entry.pendingId) ?? 0n);
      replayed.set(id, current);
    }
  }
  for (const account of store.accounts.values()) {
    const expected = replayed.get(account.id) ?? { debitsPosted: 0n, creditsPosted: 0n, debitsPending: 0n, creditsPending: 0n };
    assert.deepEqual(
      [account.debitsPosted, account.creditsPosted, account.debitsPending, account.creditsPending],
      [expected.debitsPosted, expected.creditsPosted, expected.debitsPending, expected.creditsPending],
      `${account.id} drifted from the journal`,
    );
  }
  for (const [id, count] of resolutions) assert.equal(count, 1, `pending ${id} resolved ${count} times`);
  // Reserved totals are exactly the still-pending reservations.
  const reserved = new Map<string, bigint>();
  for (const pending of store.pendings.values()) {
    if (pending.status !== PendingStatus.PENDING) continue;
    reserved.set(pending.transfer.debitAccountId, (reserved.get(pending.transfer.debitAccountId) ?? 0n) + pending.transfer.amountMinor);
  }
  for (const account of store.accounts.values()) assert.equal(account.debitsPending, reserved.get(account.id) ?? 0n, `${account.id} reservations`);
}

describe("planTransfers()", () => {
  it("conserves money, respects limits, resolves each reservation once, and matches the journal", () => {
    fc.assert(
      fc.property(scenario(12), ([accountCount, batches]) => {
        const store = newStore(accountCount);
        for (const batch of batches) {
          commit(store, batch);
          checkInvariants(store);
        }
      }),
      { numRuns: 400 },
    );
  });

  it("commits a linked chain entirely or not at all", () => {
    fc.assert(
      fc.property(scenario(10), ([accountCount, batches]) => {
        const store = newStore(accountCount);
        for (const batch of batches) {
          const plan = commit(store, batch);
          for (const chain of chainsOf(batch)) {
            const results = chain.map((index) => plan.outcomes[index]?.result);
            const created = results.filter((result) => result === CreateTransferResult.CREATED).length;
            assert.ok(created === 0 || created === chain.length, `chain partly committed: ${results.join(",")}`);
          }
        }
      }),
      { numRuns: 200 },
    );
  });

  it("never flips an outcome: replaying any earlier batch changes nothing and repeats each result", () => {
    fc.assert(
      fc.property(scenario(10), fc.nat(), ([accountCount, batches], pick) => {
        const store = newStore(accountCount);
        for (const batch of batches) commit(store, batch);
        const replayed = batches[pick % batches.length] as TransferInput[];
        const before = structuredClone([...store.accounts.entries()]);
        const plan = commit(store, replayed);
        assert.deepEqual([...store.accounts.entries()], before, "a replay moved money");
        assert.equal(plan.created.length, 0);
        replayed.forEach((transfer, index) => {
          const outcome = plan.outcomes[index];
          const stored = store.stored.get(transfer.id);
          if (!stored || outcome?.result === CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD) return;
          const expected = stored.kind === "created" ? CreateTransferResult.EXISTS : stored.result;
          assert.equal(outcome?.result, expected, `id ${transfer.id} flipped`);
        });
      }),
      { numRuns: 200 },
    );
  });

  it("names the field that differs when an id is reused", () => {
    const store = newStore(3);
    const base = transfer({ id: "t1", debitAccountId: "acc-0", creditAccountId: "acc-2", amountMinor: 10n, currency: "NGN" });
    commit(store, [base]);
    const cases: [Partial<TransferInput>, string][] = [
      [{ amountMinor: 11n }, "amount_minor"],
      [{ creditAccountId: "acc-1" }, "credit_account_id"],
      [{ reference: "other" }, "reference"],
      [{ metadata: { a: "b" } }, "metadata"],
      [{ kind: TransferKind.PENDING }, "kind"],
    ];
    for (const [change, field] of cases) {
      const plan = commit(store, [{ ...base, ...change }]);
      assert.deepEqual(plan.outcomes[0], { result: CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD, field });
    }
  });
});

describe("two-phase transfers", () => {
  function funded(): Store {
    const store = newStore(3);
    commit(store, [transfer({ id: "fund", debitAccountId: "acc-0", creditAccountId: "acc-2", amountMinor: 1000n, currency: "NGN" })]);
    return store;
  }
  const hold = (fields: Partial<TransferInput> = {}) =>
    transfer({ id: "hold", kind: TransferKind.PENDING, debitAccountId: "acc-2", creditAccountId: "acc-0", amountMinor: 600n, currency: "NGN", ...fields });

  it("counts a reservation against the limit, so two holds cannot spend the same money", () => {
    const store = funded();
    const plan = commit(store, [hold(), hold({ id: "hold-2" })]);
    assert.deepEqual(plan.outcomes.map((o) => o.result), [CreateTransferResult.CREATED, CreateTransferResult.EXCEEDS_CREDITS]);
    assert.equal(store.accounts.get("acc-2")?.debitsPending, 600n);
  });

  it("posts part of a reservation and releases the rest", () => {
    const store = funded();
    commit(store, [hold()]);
    const plan = commit(store, [transfer({ id: "capture", kind: TransferKind.POST_PENDING, pendingId: "hold", amountMinor: 250n })]);
    assert.equal(plan.outcomes[0]?.result, CreateTransferResult.CREATED);
    assert.deepEqual(plan.created[0]?.amountMinor, 250n);
    const wallet = store.accounts.get("acc-2") as AccountState;
    assert.equal(wallet.debitsPending, 0n);
    assert.equal(wallet.debitsPosted, 250n);
  });

  it("resolves a reservation at most once, whatever the order of post and void", () => {
    const store = funded();
    commit(store, [hold()]);
    const plan = commit(store, [
      transfer({ id: "void", kind: TransferKind.VOID_PENDING, pendingId: "hold" }),
      transfer({ id: "post", kind: TransferKind.POST_PENDING, pendingId: "hold" }),
    ]);
    assert.deepEqual(plan.outcomes.map((o) => o.result), [CreateTransferResult.CREATED, CreateTransferResult.PENDING_TRANSFER_ALREADY_VOIDED]);
    assert.equal(store.accounts.get("acc-2")?.debitsPosted, 0n);
  });

  it("refuses to post an expired reservation, and lets the ledger expire it", () => {
    const store = funded();
    commit(store, [hold({ timeoutSeconds: 1 })]);
    store.nowMs += 5000;
    const late = commit(store, [transfer({ id: "late-post", kind: TransferKind.POST_PENDING, pendingId: "hold" })]);
    assert.equal(late.outcomes[0]?.result, CreateTransferResult.PENDING_TRANSFER_EXPIRED);
    const expiry = commit(store, [transfer({ id: "expire:hold", kind: TransferKind.EXPIRE_PENDING, pendingId: "hold" })]);
    assert.equal(expiry.outcomes[0]?.result, CreateTransferResult.CREATED);
    assert.equal(store.accounts.get("acc-2")?.debitsPending, 0n);
    assert.equal(store.pendings.get("hold")?.status, PendingStatus.EXPIRED);
  });

  it("names what differs from the reservation, and refuses to resolve a transfer that is not pending", () => {
    const store = funded();
    commit(store, [hold()]);
    const wrong = commit(store, [transfer({ id: "p1", kind: TransferKind.POST_PENDING, pendingId: "hold", creditAccountId: "acc-1" })]);
    assert.deepEqual(wrong.outcomes[0], { result: CreateTransferResult.PENDING_TRANSFER_HAS_DIFFERENT_FIELD, field: "credit_account_id" });
    const tooMuch = commit(store, [transfer({ id: "p2", kind: TransferKind.POST_PENDING, pendingId: "hold", amountMinor: 601n })]);
    assert.equal(tooMuch.outcomes[0]?.result, CreateTransferResult.EXCEEDS_PENDING_TRANSFER_AMOUNT);
    const notPending = commit(store, [transfer({ id: "p3", kind: TransferKind.VOID_PENDING, pendingId: "fund" })]);
    assert.equal(notPending.outcomes[0]?.result, CreateTransferResult.PENDING_TRANSFER_NOT_PENDING);
    const missing = commit(store, [transfer({ id: "p4", kind: TransferKind.VOID_PENDING, pendingId: "nope" })]);
    assert.equal(missing.outcomes[0]?.result, CreateTransferResult.PENDING_TRANSFER_NOT_FOUND);
  });

  it("replays a post that left accounts and amount to the reservation as EXISTS", () => {
    const store = funded();
    commit(store, [hold()]);
    const post = transfer({ id: "post", kind: TransferKind.POST_PENDING, pendingId: "hold" });
    commit(store, [post]);
    assert.equal(commit(store, [post]).outcomes[0]?.result, CreateTransferResult.EXISTS);
  });

  it("refuses transfers touching a closed account", () => {
    const store = funded();
    store.accounts.set("acc-2", { ...(store.accounts.get("acc-2") as AccountState), closed: true });
    const plan = commit(store, [transfer({ id: "x", debitAccountId: "acc-0", creditAccountId: "acc-2", amountMinor: 1n, currency: "NGN" })]);
    assert.equal(plan.outcomes[0]?.result, CreateTransferResult.CREDIT_ACCOUNT_CLOSED);
  });
});

describe("assertConserved()", () => {
  it("refuses a change where debits and credits differ", () => {
    const store = newStore(3);
    const account = store.accounts.get("acc-0") as AccountState;
    assert.throws(() => assertConserved(store.accounts, new Map([["acc-0", { ...account, debitsPosted: 5n }]])), /NGN debits and credits differ by 5/);
  });
});

describe("batchHash()", () => {
  it("hashes a batch exactly as journals already stored were hashed", () => {
    // Pinned: a change to the canonical encoding would make every stored journal fail to verify.
    const createdAt = new Date("2026-12-07T12:00:00.123Z");
    const rows: JournalRow[] = [
      { id: "pay-1", kind: TransferKind.POSTED, debitAccountId: "alice", creditAccountId: "merchant", amountMinor: 9_223_372_036_854_775_807n, currency: "NGN", code: 7, reference: 'order "42" \\ ü', metadata: { zeta: "1", alpha: "two" }, linked: true, pendingId: "", timeoutSeconds: 0, sequence: 41n, batch: 9n, createdAt },
      { id: "post-1", kind: TransferKind.POST_PENDING, debitAccountId: "alice", creditAccountId: "merchant", amountMinor: 1n, currency: "NGN", code: 0, reference: "", metadata: {}, linked: false, pendingId: "hold-1", timeoutSeconds: 30, sequence: 42n, batch: 9n, createdAt },
    ];
    const hex = Buffer.from(batchHash(new Uint8Array(32).fill(7), rows)).toString("hex");
    assert.equal(hex, "c45e8830d3283d2ea44b2f9b7b4eae1a8fec222943b777c521b834110b06d6da");
  });
});
