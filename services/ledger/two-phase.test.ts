// Two-phase transfers, account lifecycle and reads of the past, against the real Ledger service
// over a socket on a fresh PostgreSQL database: reservations that are posted, partly posted,
// voided or expire, resolved at most once even when clients race (through one process and
// through two processes sharing the database), closed accounts, history with running balances
// and pagination, balances at a point in time, validation, and group commit's gap-free order.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AccountCode,
  CloseAccountResult,
  CreateAccountResult,
  CreateTransferResult,
  LedgerService,
  TransferKind,
  type Transfer,
} from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { freshDatabase, startTestService } from "../runtime/testing.js";
import { expireTransferId, ledgerModule } from "./service.js";

type Ledger = Client<typeof LedgerService>;

let database: Awaited<ReturnType<typeof freshDatabase>>;
/** Two Ledger processes' worth of service on the same database: A is the default. */
const instances: Awaited<ReturnType<typeof startTestService>>[] = [];
let ledger: Ledger;
let ledgerB: Ledger;

async function startInstance(): Promise<Ledger> {
  const instance = await startTestService(ledgerModule, { DATABASE_URL: database.url, COWRIE_DATABASE_POOL_MAX: "16" });
  instances.push(instance);
  return createClient(LedgerService, createConnectTransport({ baseUrl: instance.baseUrl, httpVersion: "2" }));
}

before(async () => {
  database = await freshDatabase("two_phase");
  ledger = await startInstance();
  ledgerB = await startInstance();
});

after(async () => {
  for (const instance of instances) await instance.close();
  await database?.drop();
});

let counter = 0;
function uniqueId(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function openAccounts(count: number, options: { constrained?: boolean; code?: AccountCode } = {}): Promise<string[]> {
  const ids = Array.from({ length: count }, () => uniqueId("acct"));
  const { results } = await ledger.createAccounts({
    accounts: ids.map((id) => ({
      id,
      currency: "NGN",
      code: options.code ?? AccountCode.CUSTOMER_WALLET,
      debitsMustNotExceedCredits: options.constrained ?? true,
    })),
  });
  assert.ok(results.every((item) => item.result === CreateAccountResult.CREATED));
  return ids;
}

type TransferInit = Omit<Partial<Transfer>, "$typeName">;

function posted(debitAccountId: string, creditAccountId: string, amountMinor: bigint, fields: TransferInit = {}): TransferInit {
  return { id: uniqueId("tr"), kind: TransferKind.POSTED, debitAccountId, creditAccountId, amountMinor, currency: "NGN", code: 1, ...fields };
}

function pending(debitAccountId: string, creditAccountId: string, amountMinor: bigint, fields: TransferInit = {}): TransferInit {
  return posted(debitAccountId, creditAccountId, amountMinor, { id: uniqueId("hold"), kind: TransferKind.PENDING, ...fields });
}

function postPending(pendingId: string, amountMinor = 0n, fields: TransferInit = {}): TransferInit {
  return { id: uniqueId("post"), kind: TransferKind.POST_PENDING, pendingId, amountMinor, ...fields };
}

function voidPending(pendingId: string, fields: TransferInit = {}): TransferInit {
  return { id: uniqueId("void"), kind: TransferKind.VOID_PENDING, pendingId, ...fields };
}

/** Submits one transfer in its own call and returns its per-item result. */
async function submit(transfer: TransferInit, client: Ledger = ledger) {
  const { results } = await client.createTransfers({ transfers: [transfer] });
  assert.equal(results.length, 1);
  return results[0] as NonNullable<(typeof results)[number]>;
}

async function created(transfer: TransferInit, client: Ledger = ledger): Promise<bigint> {
  const item = await submit(transfer, client);
  assert.equal(CreateTransferResult[item.result], "CREATED", `transfer ${transfer.id}`);
  return item.sequence;
}

async function account(id: string) {
  const { accounts } = await ledger.lookupAccounts({ ids: [id] });
  const found = accounts[0];
  assert.ok(found, `account ${id} not found`);
  return found;
}

function totals(found: { debitsPosted: bigint; creditsPosted: bigint; debitsPending: bigint; creditsPending: bigint }) {
  return { debitsPosted: found.debitsPosted, creditsPosted: found.creditsPosted, debitsPending: found.debitsPending, creditsPending: found.creditsPending };
}

/** A funding source and `count` wallets, each wallet funded with `balance`. */
async function fundedWallets(count: number, balance: bigint): Promise<{ source: string; wallets: string[] }> {
  const [source] = (await openAccounts(1, { constrained: false, code: AccountCode.FUNDING })) as [string];
  const wallets = await openAccounts(count);
  if (balance > 0n) {
    const { results } = await ledger.createTransfers({ transfers: wallets.map((wallet) => posted(source, wallet, balance)) });
    assert.ok(results.every((item) => item.result === CreateTransferResult.CREATED));
  }
  return { source, wallets };
}

function expectInvalid(field: string) {
  return (error: unknown) => {
    assert.ok(error instanceof ConnectError, String(error));
    assert.equal(error.code, Code.InvalidArgument, error.message);
    assert.ok(error.rawMessage.startsWith(`${field}:`), `"${error.rawMessage}" should name ${field}`);
    return true;
  };
}

/** Epoch milliseconds of a commit time the service must have set. */
function millis(time: Timestamp | undefined): number {
  assert.ok(time, "created_at is set");
  return timestampDate(time).getTime();
}

async function until<T>(probe: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const startedAtMs = Date.now();
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() - startedAtMs > timeoutMs) assert.fail(`${what} not within ${timeoutMs} ms`);
    await sleep(50);
  }
}

describe("two-phase transfers", () => {
  it("reserves with PENDING (available_minor drops) and posts the whole amount", async () => {
    const { wallets: [wallet] } = await fundedWallets(1, 5000n);
    const [merchant] = (await openAccounts(1, { constrained: false, code: AccountCode.MERCHANT_WALLET })) as [string];
    const hold = pending(wallet as string, merchant, 2000n);
    await created(hold);
    const reserved = await account(wallet as string);
    assert.deepEqual(totals(reserved), { debitsPosted: 0n, creditsPosted: 5000n, debitsPending: 2000n, creditsPending: 0n });
    assert.equal(reserved.availableMinor, 3000n);
    assert.equal((await account(merchant)).creditsPending, 2000n);

    const post = postPending(hold.id as string);
    const sequence = await created(post);
    const after = await account(wallet as string);
    assert.deepEqual(totals(after), { debitsPosted: 2000n, creditsPosted: 5000n, debitsPending: 0n, creditsPending: 0n });
    assert.equal(after.availableMinor, 3000n);
    assert.deepEqual(totals(await account(merchant)), { debitsPosted: 0n, creditsPosted: 2000n, debitsPending: 0n, creditsPending: 0n });

    // The post is stored resolved: accounts, currency and amount taken from the pending transfer.
    const [stored] = (await ledger.lookupTransfers({ ids: [post.id as string] })).transfers;
    assert.equal(stored?.kind, TransferKind.POST_PENDING);
    assert.equal(stored?.amountMinor, 2000n);
    assert.equal(stored?.debitAccountId, wallet);
    assert.equal(stored?.creditAccountId, merchant);
    assert.equal(stored?.currency, "NGN");

    // A retry of the same post is EXISTS with the first sequence; a second resolution is refused.
    const retry = await submit(post);
    assert.equal(CreateTransferResult[retry.result], "EXISTS");
    assert.equal(retry.sequence, sequence);
    const secondResolution = await submit(voidPending(hold.id as string));
    assert.equal(CreateTransferResult[secondResolution.result], "PENDING_TRANSFER_ALREADY_POSTED");
    assert.equal(CreateTransferResult[(await submit(postPending(hold.id as string))).result], "PENDING_TRANSFER_ALREADY_POSTED");
    assert.deepEqual(totals(await account(wallet as string)), totals(after));
  });

  it("posts part of a reservation and releases the rest", async () => {
    const { wallets: [wallet] } = await fundedWallets(1, 5000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    const hold = pending(wallet as string, merchant, 2000n);
    await created(hold);
    assert.equal((await account(wallet as string)).availableMinor, 3000n);
    assert.equal(CreateTransferResult[(await submit(postPending(hold.id as string, 2001n))).result], "EXCEEDS_PENDING_TRANSFER_AMOUNT");
    const mismatched = await submit(postPending(hold.id as string, 0n, { creditAccountId: wallet as string }));
    assert.equal(CreateTransferResult[mismatched.result], "PENDING_TRANSFER_HAS_DIFFERENT_FIELD");
    assert.equal(mismatched.field, "credit_account_id");
    const post = postPending(hold.id as string, 1500n);
    await created(post);
    const after = await account(wallet as string);
    assert.deepEqual(totals(after), { debitsPosted: 1500n, creditsPosted: 5000n, debitsPending: 0n, creditsPending: 0n });
    assert.equal(after.availableMinor, 3500n, "the unposted 500 is available again");
    assert.deepEqual(totals(await account(merchant)), { debitsPosted: 0n, creditsPosted: 1500n, debitsPending: 0n, creditsPending: 0n });
    assert.equal((await ledger.lookupTransfers({ ids: [post.id as string] })).transfers[0]?.amountMinor, 1500n);
  });

  it("voids a reservation, restoring the available balance, and refuses to post it afterwards", async () => {
    const { wallets: [wallet] } = await fundedWallets(1, 5000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    const hold = pending(wallet as string, merchant, 2000n);
    await created(hold);
    assert.equal(CreateTransferResult[(await submit(voidPending(hold.id as string, { amountMinor: 1999n }))).result], "EXCEEDS_PENDING_TRANSFER_AMOUNT");
    const cancel = voidPending(hold.id as string);
    await created(cancel);
    const after = await account(wallet as string);
    assert.deepEqual(totals(after), { debitsPosted: 0n, creditsPosted: 5000n, debitsPending: 0n, creditsPending: 0n });
    assert.equal(after.availableMinor, 5000n);
    assert.deepEqual(totals(await account(merchant)), { debitsPosted: 0n, creditsPosted: 0n, debitsPending: 0n, creditsPending: 0n });
    assert.equal(CreateTransferResult[(await submit(cancel)).result], "EXISTS");
    assert.equal(CreateTransferResult[(await submit(postPending(hold.id as string))).result], "PENDING_TRANSFER_ALREADY_VOIDED");
    assert.equal(CreateTransferResult[(await submit(voidPending(hold.id as string))).result], "PENDING_TRANSFER_ALREADY_VOIDED");
    assert.equal(CreateTransferResult[(await submit(postPending(uniqueId("nothing")))).result], "PENDING_TRANSFER_NOT_FOUND");
    const plain = posted(wallet as string, merchant, 10n);
    await created(plain);
    assert.equal(CreateTransferResult[(await submit(postPending(plain.id as string))).result], "PENDING_TRANSFER_NOT_PENDING");
  });

  it("counts reservations in available_minor on both kinds of account", async () => {
    const { source, wallets: [wallet] } = await fundedWallets(1, 5000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    await created(pending(wallet as string, merchant, 1200n));
    await created(pending(wallet as string, merchant, 800n));
    // Money coming in on hold is not available until posted.
    await created(pending(source, wallet as string, 700n));
    const found = await account(wallet as string);
    assert.deepEqual(totals(found), { debitsPosted: 0n, creditsPosted: 5000n, debitsPending: 2000n, creditsPending: 700n });
    assert.equal(found.availableMinor, 3000n);
    // A wallet may not reserve more than is available.
    assert.equal(CreateTransferResult[(await submit(pending(wallet as string, merchant, 3001n))).result], "EXCEEDS_CREDITS");
    assert.equal(CreateTransferResult[(await submit(posted(wallet as string, merchant, 3001n))).result], "EXCEEDS_CREDITS");
    await created(posted(wallet as string, merchant, 3000n));
    assert.equal((await account(wallet as string)).availableMinor, 0n);

    // Debit-normal (credits_must_not_exceed_debits): available = debits - credits - credits_pending.
    const clearing = uniqueId("clearing");
    await ledger.createAccounts({ accounts: [{ id: clearing, currency: "NGN", code: AccountCode.GATEWAY_CLEARING, creditsMustNotExceedDebits: true }] });
    await created(posted(clearing, source, 1000n));
    await created(pending(source, clearing, 400n));
    const debitNormal = await account(clearing);
    assert.equal(debitNormal.availableMinor, 600n);
    assert.equal(CreateTransferResult[(await submit(pending(source, clearing, 601n))).result], "EXCEEDS_DEBITS");
  });
});

describe("two-phase races (real PostgreSQL, two Ledger processes)", () => {
  it("resolves a pending transfer exactly once when 20 posts and voids race", async () => {
    const { wallets } = await fundedWallets(5, 5000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    const winners = new Set<string>();
    for (const wallet of wallets) {
      const hold = pending(wallet, merchant, 1000n);
      await created(hold);
      const racers = Array.from({ length: 20 }, (_, index) =>
        index % 2 === 0 ? postPending(hold.id as string, index % 4 === 0 ? 0n : 600n) : voidPending(hold.id as string),
      );
      const results = await Promise.all(racers.map((racer, index) => submit(racer, index % 3 === 0 ? ledgerB : ledger)));
      const names = results.map((item) => CreateTransferResult[item.result]);
      const createdAt = names.flatMap((name, index) => (name === "CREATED" ? [index] : []));
      assert.equal(createdAt.length, 1, `exactly one resolution must win: ${names.join(",")}`);
      const winner = racers[createdAt[0] as number] as TransferInit;
      const loserResult = winner.kind === TransferKind.POST_PENDING ? "PENDING_TRANSFER_ALREADY_POSTED" : "PENDING_TRANSFER_ALREADY_VOIDED";
      assert.deepEqual(names.filter((name) => name !== "CREATED"), Array(19).fill(loserResult));
      winners.add(winner.kind === TransferKind.POST_PENDING ? "post" : "void");

      const postedAmount = winner.kind === TransferKind.POST_PENDING ? (winner.amountMinor === 0n ? 1000n : winner.amountMinor as bigint) : 0n;
      assert.deepEqual(totals(await account(wallet)), { debitsPosted: postedAmount, creditsPosted: 5000n, debitsPending: 0n, creditsPending: 0n });
      const journaled = await ledger.lookupTransfers({ ids: racers.map((racer) => racer.id as string) });
      assert.deepEqual(journaled.transfers.map((found) => found.id), [winner.id]);
      // Every loser's refusal is recorded: a retry returns it again, never CREATED.
      const retries = await Promise.all(racers.map((racer) => submit(racer)));
      assert.deepEqual(retries.map((item) => CreateTransferResult[item.result]), names.map((name) => (name === "CREATED" ? "EXISTS" : name)));
    }
    assert.equal((await account(merchant)).creditsPending, 0n);
  });

  it("never lets parallel holds exceed a constrained wallet's balance: six 1,000 holds against 5,000", async () => {
    const { wallets } = await fundedWallets(4, 5000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    for (const wallet of wallets) {
      const results = await Promise.all(
        Array.from({ length: 6 }, (_, index) => submit(pending(wallet, merchant, 1000n), index % 2 === 0 ? ledger : ledgerB)),
      );
      const names = results.map((item) => CreateTransferResult[item.result]).sort();
      assert.deepEqual(names, ["CREATED", "CREATED", "CREATED", "CREATED", "CREATED", "EXCEEDS_CREDITS"]);
      const found = await account(wallet);
      assert.deepEqual(totals(found), { debitsPosted: 0n, creditsPosted: 5000n, debitsPending: 5000n, creditsPending: 0n });
      assert.equal(found.availableMinor, 0n);
    }
    // Mixed holds and spends from both processes against one wallet still stop at its balance.
    const { wallets: [wallet] } = await fundedWallets(1, 5000n);
    const mixed = await Promise.all(
      Array.from({ length: 30 }, (_, index) =>
        submit(index % 2 === 0 ? pending(wallet as string, merchant, 500n) : posted(wallet as string, merchant, 500n), index % 3 === 0 ? ledgerB : ledger),
      ),
    );
    assert.equal(mixed.filter((item) => item.result === CreateTransferResult.CREATED).length, 10);
    const found = await account(wallet as string);
    assert.equal(found.debitsPosted + found.debitsPending, 5000n);
    assert.equal(found.availableMinor, 0n);
  });
});

describe("group commit", () => {
  it("commits 200 concurrent single-transfer calls with consecutive, gap-free sequences", async () => {
    const { wallets } = await fundedWallets(20, 100_000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    const calls = Array.from({ length: 200 }, (_, index) => posted(wallets[index % wallets.length] as string, merchant, 10n));
    const results = await Promise.all(calls.map((call) => submit(call)));
    assert.ok(results.every((item) => item.result === CreateTransferResult.CREATED), "every call succeeds");
    const sequences = results.map((item) => item.sequence).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    sequences.forEach((sequence, index) => {
      if (index > 0) assert.equal(sequence, (sequences[index - 1] as bigint) + 1n, "sequences are contiguous");
    });
    // Transfers committed together share a commit time: fewer commits than calls means batching.
    const { transfers } = await ledger.lookupTransfers({ ids: calls.map((call) => call.id as string) });
    assert.equal(transfers.length, 200);
    const commits = new Set(transfers.map((found) => millis(found.createdAt)));
    assert.ok(commits.size < 200, `expected batching, saw ${commits.size} commits for 200 calls`);
    assert.equal((await account(merchant)).creditsPosted, 2000n);
  });

  it("keeps each caller's transfers consecutive and in request order inside a shared commit", async () => {
    const { wallets } = await fundedWallets(10, 100_000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    const responses = await Promise.all(
      Array.from({ length: 50 }, (_, index) =>
        ledger.createTransfers({
          transfers: Array.from({ length: 4 }, () => posted(wallets[index % wallets.length] as string, merchant, 1n)),
        }),
      ),
    );
    const all: bigint[] = [];
    for (const { results } of responses) {
      assert.deepEqual(results.map((item) => item.index), [0, 1, 2, 3]);
      results.forEach((item, index) => {
        assert.equal(item.result, CreateTransferResult.CREATED);
        if (index > 0) assert.equal(item.sequence, (results[index - 1]?.sequence as bigint) + 1n);
        all.push(item.sequence);
      });
    }
    all.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    all.forEach((sequence, index) => index > 0 && assert.equal(sequence, (all[index - 1] as bigint) + 1n));
  });
});

describe("expiry of reservations", () => {
  it("releases a PENDING with timeout_seconds 1 in the background, journaled as expire:<id>", async () => {
    const { wallets: [wallet] } = await fundedWallets(1, 5000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    const hold = pending(wallet as string, merchant, 1200n, { timeoutSeconds: 1 });
    const startedAtMs = Date.now();
    await created(hold);
    assert.equal((await account(wallet as string)).debitsPending, 1200n);
    await until(async () => ((await account(wallet as string)).debitsPending === 0n ? true : undefined), 3000, "the reservation released");
    const elapsedMs = Date.now() - startedAtMs;
    assert.ok(elapsedMs >= 900, `released after ${elapsedMs} ms, before its timeout`);

    const found = await account(wallet as string);
    assert.deepEqual(totals(found), { debitsPosted: 0n, creditsPosted: 5000n, debitsPending: 0n, creditsPending: 0n });
    assert.equal(found.availableMinor, 5000n);
    assert.equal((await account(merchant)).creditsPending, 0n);
    const [expiry] = (await ledger.lookupTransfers({ ids: [`expire:${hold.id}`] })).transfers;
    assert.ok(expiry, "the expiry is in the journal");
    assert.equal(expiry.kind, TransferKind.EXPIRE_PENDING);
    assert.equal(expiry.pendingId, hold.id);
    assert.equal(expiry.amountMinor, 1200n);
    assert.equal(expiry.debitAccountId, wallet);
    assert.equal(expiry.creditAccountId, merchant);

    assert.equal(CreateTransferResult[(await submit(postPending(hold.id as string))).result], "PENDING_TRANSFER_EXPIRED");
    assert.equal(CreateTransferResult[(await submit(voidPending(hold.id as string))).result], "PENDING_TRANSFER_EXPIRED");
  });

  it("refuses to post a reservation whose timeout passed even before the background task ran", async () => {
    const { wallets: [wallet] } = await fundedWallets(1, 5000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    const hold = pending(wallet as string, merchant, 300n, { timeoutSeconds: 1 });
    await created(hold);
    await sleep(1100);
    assert.equal(CreateTransferResult[(await submit(postPending(hold.id as string))).result], "PENDING_TRANSFER_EXPIRED");
    await until(async () => ((await account(wallet as string)).debitsPending === 0n ? true : undefined), 3000, "the reservation released");
  });

  it("expires long pending ids that share their first 57 characters, each once", async () => {
    const { wallets: [wallet] } = await fundedWallets(1, 5000n);
    const [merchant] = (await openAccounts(1, { constrained: false })) as [string];
    const stem = `long-${process.pid}-`.padEnd(57, "x");
    const holds = [pending(wallet as string, merchant, 100n, { id: `${stem}-000001`, timeoutSeconds: 1 }), pending(wallet as string, merchant, 200n, { id: `${stem}-000002`, timeoutSeconds: 1 })];
    assert.equal(holds[0]?.id?.length, 64);
    const { results } = await ledger.createTransfers({ transfers: holds });
    assert.ok(results.every((item) => item.result === CreateTransferResult.CREATED));
    // And an ordinary short one that expires in the same pass must not be held up by them.
    const short = pending(wallet as string, merchant, 400n, { timeoutSeconds: 1 });
    await created(short);
    await until(async () => ((await account(wallet as string)).debitsPending === 0n ? true : undefined), 4000, "all three reservations released");
    assert.equal((await account(wallet as string)).availableMinor, 5000n);
    const expiries = (await ledger.lookupTransfers({ ids: [...holds, short].map((hold) => expireTransferId(hold.id as string)) })).transfers;
    assert.deepEqual(expiries.map((expiry) => expiry.pendingId), [...holds, short].map((hold) => hold.id));
    assert.ok(expiries.every((expiry) => expiry.kind === TransferKind.EXPIRE_PENDING && expiry.id.length <= 64));
    assert.equal(expiries[2]?.id, `expire:${short.id}`);
  });

  it("keeps the expire: ids for the ledger, so a client cannot block a reservation's expiry", async () => {
    const { wallets: [wallet], source } = await fundedWallets(1, 5000n);
    const hold = pending(wallet as string, source, 100n, { timeoutSeconds: 1 });
    await assert.rejects(ledger.createTransfers({ transfers: [posted(source, wallet as string, 1n, { id: `expire:${hold.id}` })] }), expectInvalid("transfers[0].id"));
    await assert.rejects(ledger.createTransfers({ transfers: [posted(source, wallet as string, 1n), posted(source, wallet as string, 1n, { id: "expire:x" })] }), expectInvalid("transfers[1].id"));
  });
});

describe("LedgerService.CloseAccounts", () => {
  it("closes only empty accounts, reports ALREADY_CLOSED, HAS_PENDING_TRANSFERS, HAS_BALANCE and NOT_FOUND, and closed accounts take no transfers", async () => {
    const { source, wallets: [open, held] } = await fundedWallets(2, 1000n);
    const hold = pending(held as string, source, 100n);
    await created(hold);
    const unknown = uniqueId("nobody");
    assert.equal(CloseAccountResult[(await ledger.closeAccounts({ ids: [open as string] })).results[0]?.result as number], "HAS_BALANCE");
    await created(posted(open as string, source, 1000n));
    const { results } = await ledger.closeAccounts({ ids: [open as string, unknown, held as string] });
    assert.deepEqual(results.map((item) => item.index), [0, 1, 2]);
    assert.deepEqual(
      results.map((item) => CloseAccountResult[item.result]),
      ["CLOSED", "NOT_FOUND", "HAS_PENDING_TRANSFERS"],
    );
    assert.equal(CloseAccountResult[(await ledger.closeAccounts({ ids: [open as string] })).results[0]?.result as number], "ALREADY_CLOSED");
    assert.equal((await account(open as string)).closed, true);
    assert.equal((await account(held as string)).closed, false);

    assert.equal(CreateTransferResult[(await submit(posted(source, open as string, 10n))).result], "CREDIT_ACCOUNT_CLOSED");
    assert.equal(CreateTransferResult[(await submit(posted(open as string, source, 10n))).result], "DEBIT_ACCOUNT_CLOSED");
    assert.equal(CreateTransferResult[(await submit(pending(source, open as string, 10n))).result], "CREDIT_ACCOUNT_CLOSED");
    assert.deepEqual(totals(await account(open as string)), { debitsPosted: 1000n, creditsPosted: 1000n, debitsPending: 0n, creditsPending: 0n });

    // Once its reservation is resolved and its money moved out, the account can be closed.
    await created(voidPending(hold.id as string));
    assert.equal(CloseAccountResult[(await ledger.closeAccounts({ ids: [held as string] })).results[0]?.result as number], "HAS_BALANCE");
    await created(posted(held as string, source, 1000n));
    assert.equal(CloseAccountResult[(await ledger.closeAccounts({ ids: [held as string] })).results[0]?.result as number], "CLOSED");
    await assert.rejects(ledger.closeAccounts({ ids: ["not valid!"] }), expectInvalid("ids[0]"));
  });
});

interface Totals { debitsPosted: bigint; creditsPosted: bigint; debitsPending: bigint; creditsPending: bigint }
const ZERO: Totals = { debitsPosted: 0n, creditsPosted: 0n, debitsPending: 0n, creditsPending: 0n };

describe("LedgerService.GetAccountHistory", () => {
  it("lists an account's transfers oldest first with running balances, pages and time filters", async () => {
    const [source, other] = (await openAccounts(2, { constrained: false })) as [string, string];
    const [wallet] = (await openAccounts(1)) as [string];
    // The operations, and a model of the wallet's four totals after each one.
    const running: Totals[] = [];
    const holds = new Map<string, { amount: bigint; side: "debit" | "credit" }>();
    let model: Totals = { ...ZERO };
    const ids: string[] = [];
    const step = async (transfer: TransferInit) => {
      await created(transfer);
      ids.push(transfer.id as string);
      const next = { ...model };
      const side = transfer.debitAccountId === wallet ? "debit" : "credit";
      if (transfer.kind === TransferKind.POSTED) next[`${side}sPosted`] += transfer.amountMinor as bigint;
      if (transfer.kind === TransferKind.PENDING) {
        next[`${side}sPending`] += transfer.amountMinor as bigint;
        holds.set(transfer.id as string, { amount: transfer.amountMinor as bigint, side });
      }
      if (transfer.kind === TransferKind.POST_PENDING || transfer.kind === TransferKind.VOID_PENDING) {
        const hold = holds.get(transfer.pendingId as string) as { amount: bigint; side: "debit" | "credit" };
        next[`${hold.side}sPending`] -= hold.amount;
        if (transfer.kind === TransferKind.POST_PENDING) next[`${hold.side}sPosted`] += transfer.amountMinor || hold.amount;
      }
      model = next;
      running.push(next);
      await sleep(15);
    };
    await step(posted(source, wallet, 1000n));
    const out = pending(wallet, other, 300n);
    await step(out);
    await step(postPending(out.id as string, 200n, { debitAccountId: wallet, creditAccountId: other, amountMinor: 200n }));
    await step(posted(wallet, other, 100n));
    const incoming = pending(source, wallet, 400n);
    await step(incoming);
    await step(voidPending(incoming.id as string, { debitAccountId: source, creditAccountId: wallet }));
    await step(posted(source, wallet, 50n));
    // Unrelated traffic in between does not show up.
    await created(posted(source, other, 5n));

    const { entries, nextPageToken } = await ledger.getAccountHistory({ accountId: wallet });
    assert.equal(nextPageToken, "");
    assert.deepEqual(entries.map((entry) => entry.transfer?.id), ids);
    entries.forEach((entry, index) => {
      const { $typeName: _, ...balance } = entry.balanceAfter as NonNullable<typeof entry.balanceAfter>;
      assert.deepEqual(balance, running[index], `balance after entry ${index} (${entry.transfer?.id})`);
    });
    assert.deepEqual(running[running.length - 1], totals(await account(wallet)));
    const sequences = entries.map((entry) => entry.transfer?.sequence as bigint);
    assert.deepEqual([...sequences].sort((a, b) => (a < b ? -1 : 1)), sequences, "oldest first");

    // Pages of two walk every entry exactly once.
    const walked: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await ledger.getAccountHistory({ accountId: wallet, pageSize: 2, pageToken: token });
      assert.ok(page.entries.length <= 2);
      page.entries.forEach((entry) => {
        walked.push(entry.transfer?.id as string);
        const { $typeName: _, ...balance } = entry.balanceAfter as NonNullable<typeof entry.balanceAfter>;
        assert.deepEqual(balance, running[ids.indexOf(entry.transfer?.id as string)]);
      });
      token = page.nextPageToken;
      pages++;
      assert.ok(pages < 10, "pagination terminates");
    } while (token !== "");
    assert.deepEqual(walked, ids);
    assert.equal(pages, 4);

    // from_time is inclusive, to_time exclusive; balances still count everything before.
    const times = entries.map((entry) => millis(entry.transfer?.createdAt));
    assert.equal(new Set(times).size, times.length, "separate calls commit at separate times");
    const window = await ledger.getAccountHistory({
      accountId: wallet,
      fromTime: timestampFromDate(new Date(times[2] as number)),
      toTime: timestampFromDate(new Date(times[5] as number)),
    });
    assert.deepEqual(window.entries.map((entry) => entry.transfer?.id), ids.slice(2, 5));
    const { $typeName: _, ...firstInWindow } = window.entries[0]?.balanceAfter as NonNullable<(typeof entries)[number]["balanceAfter"]>;
    assert.deepEqual(firstInWindow, running[2]);
    const windowPaged = await ledger.getAccountHistory({ accountId: wallet, pageSize: 2, fromTime: timestampFromDate(new Date(times[2] as number)), toTime: timestampFromDate(new Date(times[5] as number)) });
    assert.deepEqual(windowPaged.entries.map((entry) => entry.transfer?.id), ids.slice(2, 4));
    const rest = await ledger.getAccountHistory({ accountId: wallet, pageSize: 2, pageToken: windowPaged.nextPageToken, fromTime: timestampFromDate(new Date(times[2] as number)), toTime: timestampFromDate(new Date(times[5] as number)) });
    assert.deepEqual(rest.entries.map((entry) => entry.transfer?.id), ids.slice(4, 5));
    assert.equal(rest.nextPageToken, "");
    assert.equal((await ledger.getAccountHistory({ accountId: wallet, fromTime: timestampFromDate(new Date(Date.now() + 60_000)) })).entries.length, 0);
  });

  it("refuses a garbage page_token with INVALID_ARGUMENT and an unknown account with NOT_FOUND", async () => {
    const [wallet] = (await openAccounts(1)) as [string];
    await assert.rejects(ledger.getAccountHistory({ accountId: wallet, pageToken: "not-a-token" }), expectInvalid("page_token"));
    await assert.rejects(ledger.getAccountHistory({ accountId: wallet, pageToken: Buffer.from("s:-1").toString("base64url") }), expectInvalid("page_token"));
    await assert.rejects(ledger.getAccountHistory({ accountId: wallet, pageSize: 1001 }), expectInvalid("page_size"));
    await assert.rejects(ledger.getAccountHistory({ accountId: "" }), expectInvalid("account_id"));
    await assert.rejects(ledger.getAccountHistory({ accountId: uniqueId("nobody") }), (error: ConnectError) => error.code === Code.NotFound);
    assert.deepEqual((await ledger.getAccountHistory({ accountId: wallet })).entries, []);
  });
});

describe("LedgerService.GetAccountBalanceAt", () => {
  it("returns the totals after the transfers committed at or before the time", async () => {
    const [source] = (await openAccounts(1, { constrained: false })) as [string];
    const [wallet] = (await openAccounts(1)) as [string];
    const first = posted(source, wallet, 700n);
    const firstSequence = await created(first);
    await sleep(30);
    const second = pending(wallet, source, 200n);
    const secondSequence = await created(second);
    const [one, two] = (await ledger.lookupTransfers({ ids: [first.id as string, second.id as string] })).transfers;
    const t1 = millis(one?.createdAt);
    const t2 = millis(two?.createdAt);
    assert.ok(t2 > t1, "two calls commit at two times");

    const at = async (ms: number) => {
      const response = await ledger.getAccountBalanceAt({ accountId: wallet, time: timestampFromDate(new Date(ms)) });
      const { $typeName: _, ...balance } = response.balance as NonNullable<typeof response.balance>;
      return { balance, sequence: response.sequence };
    };
    const afterFirst = { balance: { ...ZERO, creditsPosted: 700n }, sequence: firstSequence };
    assert.deepEqual(await at(Math.floor((t1 + t2) / 2)), afterFirst);
    assert.deepEqual(await at(t1), afterFirst, "the time is inclusive");
    assert.deepEqual(await at(t1 - 1), { balance: ZERO, sequence: 0n });
    assert.deepEqual(await at(t2), { balance: { ...ZERO, creditsPosted: 700n, debitsPending: 200n }, sequence: secondSequence });

    await assert.rejects(ledger.getAccountBalanceAt({ accountId: wallet }), expectInvalid("time"));
    await assert.rejects(
      ledger.getAccountBalanceAt({ accountId: uniqueId("nobody"), time: timestampFromDate(new Date()) }),
      (error: ConnectError) => error.code === Code.NotFound,
    );
  });
});

describe("CreateTransfers validation of two-phase fields", () => {
  it("names the field and writes nothing", async () => {
    const { source, wallets: [wallet] } = await fundedWallets(1, 1000n);
    const hold = pending(wallet as string, source, 100n);
    await created(hold);
    const cases: [TransferInit, string][] = [
      [{ id: uniqueId("bad"), kind: TransferKind.POST_PENDING }, "transfers[0].pending_id"],
      [{ id: uniqueId("bad"), kind: TransferKind.VOID_PENDING, pendingId: "" }, "transfers[0].pending_id"],
      [posted(source, wallet as string, 10n, { timeoutSeconds: 5 }), "transfers[0].timeout_seconds"],
      [postPending(hold.id as string, 0n, { timeoutSeconds: 5 }), "transfers[0].timeout_seconds"],
      [pending(source, wallet as string, 10n, { timeoutSeconds: 31_536_001 }), "transfers[0].timeout_seconds"],
      [posted(source, wallet as string, 10n, { kind: TransferKind.UNSPECIFIED }), "transfers[0].kind"],
      [posted(source, wallet as string, 10n, { kind: TransferKind.EXPIRE_PENDING, pendingId: hold.id as string }), "transfers[0].kind"],
      [{ id: uniqueId("bad"), kind: TransferKind.EXPIRE_PENDING, pendingId: hold.id as string }, "transfers[0].kind"],
      [posted(source, wallet as string, 10n, { kind: 42 as TransferKind }), "transfers[0].kind"],
      [posted(source, wallet as string, 10n, { pendingId: hold.id as string }), "transfers[0].pending_id"],
      [postPending(hold.id as string, -1n), "transfers[0].amount_minor"],
    ];
    for (const [transfer, field] of cases) {
      await assert.rejects(ledger.createTransfers({ transfers: [transfer] }), expectInvalid(field));
    }
    const ids = cases.map(([transfer]) => transfer.id as string);
    assert.equal((await ledger.lookupTransfers({ ids })).transfers.length, 0);
    // Refused at validation, not recorded: the same ids can still be used properly.
    const post = postPending(hold.id as string, 0n, { id: ids[0] as string });
    await created(post);
    assert.deepEqual(totals(await account(wallet as string)), { debitsPosted: 100n, creditsPosted: 1000n, debitsPending: 0n, creditsPending: 0n });
  });
});
