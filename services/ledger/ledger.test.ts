// The Ledger service against a real PostgreSQL, over a real socket: results per item, replays
// that never flip, validation that writes nothing, races between many concurrent clients, and
// the journal feed the relay publishes.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { sql } from "drizzle-orm";
import { equals, fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  AccountCode,
  CreateAccountResult,
  CreateTransferResult,
  LedgerService,
  TransferKind,
  TransferSchema,
  type Transfer,
} from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { EnvelopeSchema, LedgerBatchCommittedSchema, type Envelope, type LedgerBatchCommitted } from "../../gen/cowrie/events/v1/events_pb.js";
import { createPostgresDatabase } from "../runtime/db.js";
import { freshDatabase, startTestService } from "../runtime/testing.js";
import { journalFeed } from "./events.js";
import { ledgerModule } from "./service.js";

let database: Awaited<ReturnType<typeof freshDatabase>>;
let service: Awaited<ReturnType<typeof startTestService>>;
let ledger: Client<typeof LedgerService>;

before(async () => {
  database = await freshDatabase("ledger");
  service = await startTestService(ledgerModule, { DATABASE_URL: database.url, COWRIE_DATABASE_POOL_MAX: "16" });
  ledger = createClient(LedgerService, createConnectTransport({ baseUrl: service.baseUrl, httpVersion: "2" }));
});

after(async () => {
  await service?.close();
  await database?.drop();
});

let counter = 0;
function uniqueId(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}

async function openAccounts(count: number, options: { currency?: string; constrained?: boolean } = {}): Promise<string[]> {
  const ids = Array.from({ length: count }, () => uniqueId("acct"));
  const { results } = await ledger.createAccounts({
    accounts: ids.map((id) => ({
      id,
      currency: options.currency ?? "NGN",
      code: AccountCode.CUSTOMER_WALLET,
      debitsMustNotExceedCredits: options.constrained ?? true,
    })),
  });
  assert.ok(results.every((item) => item.result === CreateAccountResult.CREATED));
  return ids;
}

async function fundingAccount(): Promise<string> {
  const [id] = await openAccounts(1, { constrained: false });
  return id as string;
}

type TransferInit = Omit<Partial<Transfer>, "$typeName">;

function transfer(fields: TransferInit & Pick<Transfer, "debitAccountId" | "creditAccountId">): TransferInit {
  return { id: uniqueId("tr"), kind: TransferKind.POSTED, amountMinor: 100n, currency: "NGN", code: 1, ...fields };
}

async function balances(id: string) {
  const { accounts } = await ledger.lookupAccounts({ ids: [id] });
  const account = accounts[0];
  assert.ok(account, `account ${id} not found`);
  return account;
}

describe("LedgerService.CreateAccounts", () => {
  it("creates, reports an identical retry as EXISTS and a changed one by field", async () => {
    const id = uniqueId("acct");
    const account = { id, currency: "NGN", code: AccountCode.MERCHANT_WALLET, ownerRef: "m-1" };
    assert.equal((await ledger.createAccounts({ accounts: [account] })).results[0]?.result, CreateAccountResult.CREATED);
    assert.equal((await ledger.createAccounts({ accounts: [account] })).results[0]?.result, CreateAccountResult.EXISTS);
    const changed = (await ledger.createAccounts({ accounts: [{ ...account, currency: "KES" }] })).results[0];
    assert.equal(changed?.result, CreateAccountResult.EXISTS_WITH_DIFFERENT_FIELD);
    assert.equal(changed?.field, "currency");
  });

  it("rejects a malformed account with INVALID_ARGUMENT naming the field, and writes nothing", async () => {
    const good = uniqueId("acct");
    await assert.rejects(
      ledger.createAccounts({ accounts: [{ id: good, currency: "NGN", code: AccountCode.FEES }, { id: uniqueId("acct"), currency: "naira", code: AccountCode.FEES }] }),
      (error: ConnectError) => error.code === Code.InvalidArgument && error.rawMessage.startsWith("accounts[1].currency:"),
    );
    assert.equal((await ledger.lookupAccounts({ ids: [good] })).accounts.length, 0);
  });
});

describe("LedgerService.CreateTransfers", () => {
  it("moves money, replays an identical retry, and names the field of a conflicting one", async () => {
    const source = await fundingAccount();
    const [wallet] = (await openAccounts(1)) as [string];
    const first = transfer({ debitAccountId: source, creditAccountId: wallet, amountMinor: 2500n });
    const created = (await ledger.createTransfers({ transfers: [first] })).results[0];
    assert.equal(created?.result, CreateTransferResult.CREATED);
    assert.ok((created?.sequence ?? 0n) > 0n);
    const again = (await ledger.createTransfers({ transfers: [first] })).results[0];
    assert.equal(again?.result, CreateTransferResult.EXISTS);
    assert.equal(again?.sequence, created?.sequence);
    const conflicting = (await ledger.createTransfers({ transfers: [{ ...first, amountMinor: 2501n }] })).results[0];
    assert.equal(conflicting?.result, CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD);
    assert.equal(conflicting?.field, "amount_minor");
    assert.equal((await balances(wallet)).creditsPosted, 2500n);
    const [stored] = (await ledger.lookupTransfers({ ids: [first.id as string] })).transfers;
    assert.equal(stored?.amountMinor, 2500n);
  });

  it("publishes each batch as ledger.batch.committed with its transfers as LookupTransfers returns them", async () => {
    const source = await fundingAccount();
    const [payer, merchant] = (await openAccounts(2)) as [string, string];
    const batch = [
      transfer({ debitAccountId: source, creditAccountId: payer, amountMinor: 9_000n, reference: "top-up \"ü\" \\\\ {1,2}", metadata: { channel: "app", note: "" } }),
      transfer({ debitAccountId: payer, creditAccountId: merchant, amountMinor: 2_500n, kind: TransferKind.PENDING, timeoutSeconds: 300, linked: true }),
      transfer({ debitAccountId: payer, creditAccountId: merchant, amountMinor: 1n, code: 65535 }),
    ];
    const { results } = await ledger.createTransfers({ transfers: batch });
    assert.deepEqual(results.map((item) => item.result), batch.map(() => CreateTransferResult.CREATED));
    const ids = batch.map((item) => item.id as string);
    const { transfers: stored } = await ledger.lookupTransfers({ ids });
    // Quotes, backslashes, braces and commas survive the array literals the commit sends.
    assert.equal(stored.find((item) => item.id === ids[0])?.reference, batch[0]?.reference);
    assert.deepEqual(stored.find((item) => item.id === ids[0])?.metadata, { channel: "app", note: "" });
    // The feed from the start of the journal, read in a transaction that rolls back so that the
    // running relay's cursor is left where it was.
    const database_ = createPostgresDatabase(database.url, { poolMax: 1, applicationName: "ledger-feed-test" });
    const rolledBack = new Error("roll back");
    let published: LedgerBatchCommitted | undefined;
    let envelope: Envelope | undefined;
    await database_.db
      .transaction(async (tx) => {
        await tx.execute(sql`update ledger.relay_cursor set last_batch = 0 where id = 1`);
        for (const event of await journalFeed.next(tx, 10_000)) {
          const candidate = fromBinary(EnvelopeSchema, event.payload);
          const data = candidate.data && anyUnpack(candidate.data, LedgerBatchCommittedSchema);
          if (data?.transfers.some((item) => item.id === ids[0])) [published, envelope] = [data, candidate];
        }
        throw rolledBack;
      })
      .catch((error: unknown) => assert.equal(error, rolledBack));
    await database_.close();
    assert.ok(published && envelope, "no ledger.batch.committed carries the batch");
    assert.equal(envelope.type, "ledger.batch.committed");
    assert.equal(envelope.subject, `batch/${published.batch}`);
    const mine = published.transfers.filter((item) => ids.includes(item.id));
    assert.equal(mine.length, 3);
    for (const item of mine) {
      const expected = stored.find((candidate) => candidate.id === item.id);
      assert.ok(expected && equals(TransferSchema, item, expected), `${item.id} differs from LookupTransfers`);
    }
    assert.equal(published.lastSequence - published.firstSequence + 1n, BigInt(published.transfers.length));
  });

  it("records a refusal so that a retry never flips it, even after the funds arrive", async () => {
    const source = await fundingAccount();
    const [wallet, other] = (await openAccounts(2)) as [string, string];
    const spend = transfer({ debitAccountId: wallet, creditAccountId: other, amountMinor: 500n });
    assert.equal((await ledger.createTransfers({ transfers: [spend] })).results[0]?.result, CreateTransferResult.EXCEEDS_CREDITS);
    await ledger.createTransfers({ transfers: [transfer({ debitAccountId: source, creditAccountId: wallet, amountMinor: 1000n })] });
    assert.equal((await ledger.createTransfers({ transfers: [spend] })).results[0]?.result, CreateTransferResult.EXCEEDS_CREDITS);
    assert.equal((await balances(other)).creditsPosted, 0n);
  });

  it("commits a linked chain atomically: one failing leg fails them all", async () => {
    const source = await fundingAccount();
    const [payer, merchant, fees] = (await openAccounts(3)) as [string, string, string];
    await ledger.createTransfers({ transfers: [transfer({ debitAccountId: source, creditAccountId: payer, amountMinor: 1000n })] });
    const chain = [
      transfer({ debitAccountId: payer, creditAccountId: merchant, amountMinor: 900n, linked: true }),
      transfer({ debitAccountId: payer, creditAccountId: fees, amountMinor: 200n }),
    ];
    const results = (await ledger.createTransfers({ transfers: chain })).results.map((item) => item.result);
    assert.deepEqual(results, [CreateTransferResult.LINKED_EVENT_FAILED, CreateTransferResult.EXCEEDS_CREDITS]);
    assert.equal((await balances(merchant)).creditsPosted, 0n);
    const affordable = [
      transfer({ debitAccountId: payer, creditAccountId: merchant, amountMinor: 900n, linked: true }),
      transfer({ debitAccountId: payer, creditAccountId: fees, amountMinor: 100n }),
    ];
    const ok = (await ledger.createTransfers({ transfers: affordable })).results.map((item) => item.result);
    assert.deepEqual(ok, [CreateTransferResult.CREATED, CreateTransferResult.CREATED]);
    assert.equal((await balances(payer)).debitsPosted, 1000n);
  });

  it("rejects malformed batches with INVALID_ARGUMENT naming the field, and writes nothing", async () => {
    const source = await fundingAccount();
    const [wallet] = (await openAccounts(1)) as [string];
    const good = transfer({ debitAccountId: source, creditAccountId: wallet });
    const cases: [TransferInit[], string][] = [
      [[good, transfer({ debitAccountId: source, creditAccountId: wallet, amountMinor: 0n })], "transfers[1].amount_minor:"],
      [[good, transfer({ debitAccountId: source, creditAccountId: wallet, currency: "ngn" })], "transfers[1].currency:"],
      [[good, transfer({ debitAccountId: wallet, creditAccountId: wallet })], "transfers[1].credit_account_id:"],
      [[good, { ...good }], "transfers[1].id:"],
      [[{ ...good, linked: true }], "transfers[0].linked:"],
      [[], "transfers:"],
    ];
    for (const [transfers, prefix] of cases) {
      await assert.rejects(ledger.createTransfers({ transfers }), (error: ConnectError) => {
        assert.equal(error.code, Code.InvalidArgument);
        assert.ok(error.rawMessage.startsWith(prefix), `${error.rawMessage} should start with ${prefix}`);
        return true;
      });
    }
    assert.equal((await ledger.lookupTransfers({ ids: [good.id as string] })).transfers.length, 0);
    assert.equal((await balances(wallet)).creditsPosted, 0n);
  });
});

describe("LedgerService under concurrency (real PostgreSQL)", () => {
  it("never overdraws a constrained account: 40 parallel spends of 100 against 1,000", async () => {
    const source = await fundingAccount();
    const [wallet, sink] = (await openAccounts(2)) as [string, string];
    await ledger.createTransfers({ transfers: [transfer({ debitAccountId: source, creditAccountId: wallet, amountMinor: 1000n })] });
    const results = await Promise.all(
      Array.from({ length: 40 }, () =>
        ledger.createTransfers({ transfers: [transfer({ debitAccountId: wallet, creditAccountId: sink, amountMinor: 100n })] }),
      ),
    );
    const created = results.filter((response) => response.results[0]?.result === CreateTransferResult.CREATED).length;
    assert.equal(created, 10);
    const account = await balances(wallet);
    assert.equal(account.debitsPosted, 1000n);
    assert.equal(account.creditsPosted, 1000n);
  });

  it("decides one id exactly once when 20 clients submit it at the same time", async () => {
    const source = await fundingAccount();
    const [wallet] = (await openAccounts(1)) as [string];
    const same = transfer({ debitAccountId: source, creditAccountId: wallet, amountMinor: 700n });
    const results = await Promise.all(Array.from({ length: 20 }, () => ledger.createTransfers({ transfers: [same] })));
    const outcomes = results.map((response) => response.results[0]?.result);
    assert.equal(outcomes.filter((result) => result === CreateTransferResult.CREATED).length, 1);
    assert.equal(outcomes.filter((result) => result === CreateTransferResult.EXISTS).length, 19);
    assert.equal((await balances(wallet)).creditsPosted, 700n);
  });

  it("conserves money under random and hot-account traffic without deadlocks", async () => {
    const source = await fundingAccount();
    const wallets = await openAccounts(12);
    const hot = wallets[0] as string;
    await ledger.createTransfers({
      transfers: wallets.map((id) => transfer({ debitAccountId: source, creditAccountId: id, amountMinor: 10_000n })),
    });
    const pick = (): string => wallets[Math.floor(Math.random() * wallets.length)] as string;
    await Promise.all(
      Array.from({ length: 24 }, async (_, client) => {
        for (let round = 0; round < 8; round++) {
          const debit = pick();
          const credit = client % 2 === 0 ? hot : pick();
          if (debit === credit) continue;
          // Small multi-leg batches in both directions exercise lock ordering.
          await ledger.createTransfers({
            transfers: [
              transfer({ debitAccountId: debit, creditAccountId: credit, amountMinor: BigInt(1 + Math.floor(Math.random() * 300)) }),
              transfer({ debitAccountId: credit, creditAccountId: debit, amountMinor: BigInt(1 + Math.floor(Math.random() * 300)) }),
            ],
          });
        }
      }),
    );
    const { accounts } = await ledger.lookupAccounts({ ids: [source, ...wallets] });
    const debits = accounts.reduce((sum, account) => sum + account.debitsPosted, 0n);
    const credits = accounts.reduce((sum, account) => sum + account.creditsPosted, 0n);
    assert.equal(debits, credits);
    for (const account of accounts.slice(1)) assert.ok(account.debitsPosted <= account.creditsPosted, `${account.id} overdrawn`);
  });
});
