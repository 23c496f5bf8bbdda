// Property tests of the Ledger's decision logic: random accounts and random batches of
// transfers (linked chains, retries of earlier ids, conflicting retries), applied to an
// in-memory store the way the database applies them, checking the invariants after every batch.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { CreateTransferResult } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { assertConserved, chainsOf, planTransfers, type AccountState, type StoredOutcome, type TransferInput } from "./engine.js";

const CURRENCIES = ["NGN", "KES"];

interface Store {
  accounts: Map<string, AccountState>;
  stored: Map<string, StoredOutcome>;
  sequence: bigint;
}

function newStore(count: number): Store {
  const accounts = new Map<string, AccountState>();
  for (let index = 0; index < count; index++) {
    const id = `acc-${index}`;
    accounts.set(id, {
      id,
      currency: CURRENCIES[index % CURRENCIES.length] as string,
      // Account 0 and 1 are unconstrained sources of money; the rest may not go negative or
      // (every fifth) may not take more credit than debit.
      debitsMustNotExceedCredits: index >= 2 && index % 5 !== 4,
      creditsMustNotExceedDebits: index >= 2 && index % 5 === 4,
      debitsPosted: 0n,
      creditsPosted: 0n,
      debitsPending: 0n,
      creditsPending: 0n,
    });
  }
  return { accounts, stored: new Map(), sequence: 0n };
}

/** What the database does with a plan: store outcomes and new totals. */
function commit(store: Store, batch: TransferInput[]) {
  const plan = planTransfers(batch, store.accounts, store.stored);
  for (const transfer of plan.created) {
    store.sequence += 1n;
    store.stored.set(transfer.id, { kind: "created", transfer, sequence: store.sequence });
  }
  for (const { transfer, result } of plan.failed) store.stored.set(transfer.id, { kind: "failed", transfer, result });
  for (const [id, account] of plan.changed) store.accounts.set(id, account);
  return plan;
}

const transferArbitrary = (accountCount: number) =>
  fc.record({
    id: fc.integer({ min: 0, max: 40 }).map((n) => `tr-${n}`),
    debit: fc.integer({ min: 0, max: accountCount }),
    credit: fc.integer({ min: 0, max: accountCount }),
    amountMinor: fc.bigInt({ min: 1n, max: 5_000n }),
    currency: fc.constantFrom(...CURRENCIES),
    linked: fc.boolean(),
  });

/** Random batches with distinct ids and closed chains, as validation guarantees. */
function batchArbitrary(accountCount: number) {
  return fc.array(transferArbitrary(accountCount), { minLength: 1, maxLength: 8 }).map((raw) => {
    const seen = new Set<string>();
    const batch: TransferInput[] = [];
    for (const item of raw) {
      if (seen.has(item.id) || item.debit === item.credit) continue;
      seen.add(item.id);
      batch.push({
        id: item.id,
        // Index accountCount names an account that does not exist.
        debitAccountId: `acc-${item.debit}`,
        creditAccountId: `acc-${item.credit}`,
        amountMinor: item.amountMinor,
        currency: item.currency,
        code: 1,
        reference: "",
        metadata: {},
        linked: item.linked,
      });
    }
    const last = batch[batch.length - 1];
    if (last) batch[batch.length - 1] = { ...last, linked: false };
    return batch;
  });
}

function checkInvariants(store: Store): void {
  const totals = new Map<string, { debits: bigint; credits: bigint }>();
  for (const account of store.accounts.values()) {
    const total = totals.get(account.currency) ?? { debits: 0n, credits: 0n };
    total.debits += account.debitsPosted;
    total.credits += account.creditsPosted;
    totals.set(account.currency, total);
    if (account.debitsMustNotExceedCredits) assert.ok(account.debitsPosted + account.debitsPending <= account.creditsPosted, `${account.id} overdrawn`);
    if (account.creditsMustNotExceedDebits) assert.ok(account.creditsPosted + account.creditsPending <= account.debitsPosted, `${account.id} over-credited`);
  }
  for (const [currency, total] of totals) assert.equal(total.debits, total.credits, `${currency} not conserved`);
  // Balances are exactly the sum of the committed transfers: nothing else moves money.
  const derived = new Map<string, { debits: bigint; credits: bigint }>();
  for (const outcome of store.stored.values()) {
    if (outcome.kind !== "created") continue;
    const { debitAccountId, creditAccountId, amountMinor } = outcome.transfer;
    const debit = derived.get(debitAccountId) ?? { debits: 0n, credits: 0n };
    debit.debits += amountMinor;
    derived.set(debitAccountId, debit);
    const credit = derived.get(creditAccountId) ?? { debits: 0n, credits: 0n };
    credit.credits += amountMinor;
    derived.set(creditAccountId, credit);
  }
  for (const account of store.accounts.values()) {
    const expected = derived.get(account.id) ?? { debits: 0n, credits: 0n };
    assert.equal(account.debitsPosted, expected.debits, `${account.id} debits drifted from the journal`);
    assert.equal(account.creditsPosted, expected.credits, `${account.id} credits drifted from the journal`);
  }
}

describe("planTransfers()", () => {
  it("conserves money, respects limits and derives balances from the journal for any batches", () => {
    const scenario = fc
      .integer({ min: 2, max: 8 })
      .chain((accountCount) => fc.tuple(fc.constant(accountCount), fc.array(batchArbitrary(accountCount), { minLength: 1, maxLength: 12 })));
    fc.assert(
      fc.property(scenario, ([accountCount, batches]) => {
        const store = newStore(accountCount);
        for (const batch of batches) {
          commit(store, batch);
          checkInvariants(store);
        }
      }),
      { numRuns: 300 },
    );
  });

  it("commits a linked chain entirely or not at all", () => {
    fc.assert(
      fc.property(fc.array(batchArbitrary(6), { minLength: 1, maxLength: 10 }), (batches) => {
        const store = newStore(6);
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
      fc.property(fc.array(batchArbitrary(6), { minLength: 1, maxLength: 10 }), fc.nat(), (batches, pick) => {
        const store = newStore(6);
        const firstResults = new Map<string, CreateTransferResult>();
        for (const batch of batches) {
          const plan = commit(store, batch);
          batch.forEach((transfer, index) => {
            const result = plan.outcomes[index]?.result as CreateTransferResult;
            if (!firstResults.has(transfer.id) && result !== CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD) {
              firstResults.set(transfer.id, result);
            }
          });
        }
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
    const base: TransferInput = {
      id: "t1", debitAccountId: "acc-0", creditAccountId: "acc-2", amountMinor: 10n, currency: "NGN", code: 1, reference: "", metadata: {}, linked: false,
    };
    commit(store, [base]);
    const cases: [Partial<TransferInput>, string][] = [
      [{ amountMinor: 11n }, "amount_minor"],
      [{ creditAccountId: "acc-1" }, "credit_account_id"],
      [{ reference: "other" }, "reference"],
      [{ metadata: { a: "b" } }, "metadata"],
    ];
    for (const [change, field] of cases) {
      const plan = commit(store, [{ ...base, ...change }]);
      assert.deepEqual(plan.outcomes[0], { result: CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD, field });
    }
  });

  it("counts reserved (pending) debits against the limit", () => {
    const store = newStore(3);
    const wallet = store.accounts.get("acc-2") as AccountState;
    store.accounts.set("acc-2", { ...wallet, creditsPosted: 1000n, debitsPending: 600n });
    store.accounts.set("acc-0", { ...(store.accounts.get("acc-0") as AccountState), debitsPosted: 1000n, creditsPending: 600n });
    const plan = commit(store, [
      { id: "spend", debitAccountId: "acc-2", creditAccountId: "acc-0", amountMinor: 500n, currency: "NGN", code: 1, reference: "", metadata: {}, linked: false },
    ]);
    assert.equal(plan.outcomes[0]?.result, CreateTransferResult.EXCEEDS_CREDITS);
  });
});

describe("assertConserved()", () => {
  it("refuses a change where debits and credits differ", () => {
    const store = newStore(3);
    const account = store.accounts.get("acc-0") as AccountState;
    assert.throws(() => assertConserved(store.accounts, new Map([["acc-0", { ...account, debitsPosted: 5n }]])), /NGN debits and credits differ by 5/);
  });
});
