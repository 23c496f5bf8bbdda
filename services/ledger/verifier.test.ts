// The journal verifier against the real Ledger on fresh PostgreSQL databases: a clean journal
// has no findings; tampering as a DBA would (triggers disabled with session_replication_role)
// is reported by kind and subject; the append-only triggers refuse a plain UPDATE or DELETE; the
// journal's rows must name accounts that exist in their currency, and accounts are never deleted; and
// `npm run ledger:verify` exits 0 on a clean journal and 1 on a tampered one.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { after, describe, it } from "node:test";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import postgres from "postgres";
import {
  AccountCode,
  CreateAccountResult,
  CreateTransferResult,
  FindingKind,
  LedgerService,
  TransferKind,
  type Transfer,
  type VerifyJournalResponse,
} from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { freshDatabase, startTestService } from "../runtime/testing.js";
import { ledgerModule } from "./service.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

type Ledger = Client<typeof LedgerService>;
type TransferInit = Omit<Partial<Transfer>, "$typeName">;

interface Seeded {
  url: string;
  ledger: Ledger;
  accounts: { source: string; alice: string; bob: string; merchant: string };
  /** Transfer ids by role, for tampering. */
  ids: { aliceToBob: string; lone: string };
  close(): Promise<void>;
}

const open: Seeded[] = [];
after(async () => {
  for (const seeded of open.splice(0)) await seeded.close();
});

/** A Ledger on a fresh database. */
async function startLedger(label: string): Promise<Omit<Seeded, "accounts" | "ids">> {
  const database = await freshDatabase(`verify_${label}`);
  const service = await startTestService(ledgerModule, { DATABASE_URL: database.url, COWRIE_DATABASE_POOL_MAX: "8" });
  const ledger = createClient(LedgerService, createConnectTransport({ baseUrl: service.baseUrl, httpVersion: "2" }));
  let closed = false;
  return {
    url: database.url,
    ledger,
    async close() {
      if (closed) return;
      closed = true;
      await service.close();
      await database.drop();
    },
  };
}

function tr(id: string, fields: TransferInit): TransferInit {
  return { id, kind: TransferKind.POSTED, currency: "NGN", code: 1, ...fields };
}

async function expectCreated(ledger: Ledger, transfers: TransferInit[]): Promise<void> {
  const { results } = await ledger.createTransfers({ transfers });
  assert.deepEqual(results.map((item) => CreateTransferResult[item.result]), transfers.map(() => "CREATED"));
}

/**
 * A Ledger with a journal of posted, pending, posted-pending and voided transfers, a linked chain
 * and a reservation left open, written in several calls (so several batches).
 */
async function seededLedger(label: string): Promise<Seeded> {
  const base = await startLedger(label);
  const { ledger } = base;
  const accounts = { source: "funding", alice: "alice", bob: "bob", merchant: "merchant" };
  const created = await ledger.createAccounts({
    accounts: [
      { id: accounts.source, currency: "NGN", code: AccountCode.FUNDING },
      { id: accounts.alice, currency: "NGN", code: AccountCode.CUSTOMER_WALLET, debitsMustNotExceedCredits: true },
      { id: accounts.bob, currency: "NGN", code: AccountCode.CUSTOMER_WALLET, debitsMustNotExceedCredits: true },
      { id: accounts.merchant, currency: "NGN", code: AccountCode.MERCHANT_WALLET },
    ],
  });
  assert.ok(created.results.every((item) => item.result === CreateAccountResult.CREATED));
  const { source, alice, bob, merchant } = accounts;
  await expectCreated(ledger, [
    tr("fund-alice", { debitAccountId: source, creditAccountId: alice, amountMinor: 10_000n }),
    tr("fund-bob", { debitAccountId: source, creditAccountId: bob, amountMinor: 5000n }),
  ]);
  await expectCreated(ledger, [tr("hold-1", { kind: TransferKind.PENDING, debitAccountId: alice, creditAccountId: merchant, amountMinor: 3000n })]);
  await expectCreated(ledger, [tr("post-1", { kind: TransferKind.POST_PENDING, pendingId: "hold-1", amountMinor: 2000n, currency: "" })]);
  await expectCreated(ledger, [tr("hold-2", { kind: TransferKind.PENDING, debitAccountId: bob, creditAccountId: merchant, amountMinor: 1000n })]);
  await expectCreated(ledger, [tr("void-2", { kind: TransferKind.VOID_PENDING, pendingId: "hold-2", amountMinor: 0n, currency: "" })]);
  await expectCreated(ledger, [tr("lone", { debitAccountId: bob, creditAccountId: alice, amountMinor: 42n })]);
  await expectCreated(ledger, [
    tr("alice-to-bob", { debitAccountId: alice, creditAccountId: bob, amountMinor: 500n }),
    tr("hold-3", { kind: TransferKind.PENDING, debitAccountId: bob, creditAccountId: merchant, amountMinor: 700n }),
  ]);
  await expectCreated(ledger, [
    tr("chain-1", { debitAccountId: alice, creditAccountId: merchant, amountMinor: 100n, linked: true }),
    tr("chain-2", { debitAccountId: alice, creditAccountId: source, amountMinor: 10n }),
  ]);
  // A refusal is recorded but is not part of the journal.
  const refused = await ledger.createTransfers({ transfers: [tr("too-much", { debitAccountId: bob, creditAccountId: alice, amountMinor: 1_000_000n })] });
  assert.equal(refused.results[0]?.result, CreateTransferResult.EXCEEDS_CREDITS);
  const seeded: Seeded = { ...base, accounts, ids: { aliceToBob: "alice-to-bob", lone: "lone" } };
  open.push(seeded);
  return seeded;
}

/** Runs statements as a DBA would: on one connection with triggers (and so the guards) disabled. */
async function tamper<T>(url: string, work: (sql: postgres.ReservedSql) => Promise<T>): Promise<T> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  const connection = await sql.reserve();
  try {
    await connection`set session_replication_role = replica`;
    return await work(connection);
  } finally {
    connection.release();
    await sql.end();
  }
}

async function verify(ledger: Ledger): Promise<VerifyJournalResponse> {
  return ledger.verifyJournal({});
}

function described(response: VerifyJournalResponse): string[] {
  return response.findings.map((finding) => `${FindingKind[finding.kind]} ${finding.subject}: ${finding.detail}`);
}

function findingsOf(response: VerifyJournalResponse, kind: FindingKind) {
  return response.findings.filter((finding) => finding.kind === kind);
}

async function journalCounts(url: string): Promise<{ transfers: bigint; batches: bigint; accounts: bigint }> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql`select (select count(*) from ledger.transfers)::text as transfers, (select count(*) from ledger.journal_batches)::text as batches,
      (select count(*) from ledger.accounts)::text as accounts`;
    return { transfers: BigInt(row?.transfers), batches: BigInt(row?.batches), accounts: BigInt(row?.accounts) };
  } finally {
    await sql.end();
  }
}

describe("VerifyJournal on an untouched journal", () => {
  it("finds nothing and reports how much it replayed", async () => {
    const { url, ledger, close } = await seededLedger("clean");
    const response = await verify(ledger);
    assert.deepEqual(described(response), []);
    const counts = await journalCounts(url);
    assert.equal(counts.transfers, 11n);
    assert.equal(response.transfersChecked, counts.transfers);
    assert.equal(response.batchesChecked, counts.batches);
    assert.equal(response.accountsChecked, 4n);
    assert.ok(response.batchesChecked > 1n && response.batchesChecked < response.transfersChecked);
    await close();
  });

  it("finds nothing while transfers are being committed alongside it", async () => {
    const { ledger, accounts, close } = await seededLedger("live");
    let writing = true;
    const writes = (async () => {
      try {
        for (let round = 0; round < 15; round++) {
          await Promise.all(
            Array.from({ length: 10 }, (_, index) => {
              const credit = index % 2 ? accounts.bob : accounts.merchant;
              const kind = index % 3 === 0 ? TransferKind.PENDING : TransferKind.POSTED;
              return ledger.createTransfers({ transfers: [tr(`live-${round}-${index}`, { kind, debitAccountId: accounts.source, creditAccountId: credit, amountMinor: 1n })] });
            }),
          );
        }
      } finally {
        writing = false;
      }
    })();
    const verifications: VerifyJournalResponse[] = [];
    while (writing) verifications.push(...(await Promise.all([verify(ledger), verify(ledger)])));
    await writes;
    assert.ok(verifications.length >= 2);
    for (const response of verifications) assert.deepEqual(described(response), [], "a verification during writes");
    assert.deepEqual(described(await verify(ledger)), []);
    await close();
  });
});

describe("VerifyJournal on a tampered journal", () => {
  it("reports HASH_MISMATCH for the batch whose transfer amount was changed (and the balances that no longer replay)", async () => {
    const { url, ledger, ids, accounts, close } = await seededLedger("amount");
    const batch = await tamper(url, async (sql) => {
      const [row] = await sql`update ledger.transfers set amount_minor = amount_minor + 1 where id = ${ids.aliceToBob} returning batch::text`;
      return row?.batch as string;
    });
    const response = await verify(ledger);
    const hashes = findingsOf(response, FindingKind.HASH_MISMATCH);
    assert.deepEqual(hashes.map((finding) => finding.subject), [`batch ${batch}`], described(response).join("\n"));
    assert.match(hashes[0]?.detail ?? "", /stored [0-9a-f]+…, journal rows hash to [0-9a-f]+…/);
    const balances = findingsOf(response, FindingKind.BALANCE_MISMATCH).map((finding) => finding.subject).sort();
    assert.deepEqual(balances, [`account ${accounts.alice} debits_posted`, `account ${accounts.bob} credits_posted`]);
    assert.equal(findingsOf(response, FindingKind.SEQUENCE_GAP).length, 0);
    await close();
  });

  it("reports BALANCE_MISMATCH naming the account and field after credits_posted was changed", async () => {
    const { url, ledger, accounts, close } = await seededLedger("balance");
    const before = await ledger.lookupAccounts({ ids: [accounts.merchant] });
    const credits = before.accounts[0]?.creditsPosted as bigint;
    await tamper(url, (sql) => sql`update ledger.accounts set credits_posted = credits_posted + 7 where id = ${accounts.merchant}`);
    const response = await verify(ledger);
    const balances = findingsOf(response, FindingKind.BALANCE_MISMATCH);
    assert.deepEqual(
      balances.map((finding) => [finding.subject, finding.detail]),
      [[`account ${accounts.merchant} credits_posted`, `stored ${credits + 7n}, journal says ${credits}`]],
    );
    assert.equal(findingsOf(response, FindingKind.HASH_MISMATCH).length, 0);
    assert.equal(findingsOf(response, FindingKind.SEQUENCE_GAP).length, 0);
    await close();
  });

  it("reports SEQUENCE_GAP (and the broken batch) after a transfer row was deleted", async () => {
    const { url, ledger, ids, close } = await seededLedger("gap");
    const { sequence, batch } = await tamper(url, async (sql) => {
      const [row] = await sql`delete from ledger.transfers where id = ${ids.aliceToBob} returning sequence::text, batch::text`;
      return { sequence: BigInt(row?.sequence), batch: row?.batch as string };
    });
    const response = await verify(ledger);
    const gaps = findingsOf(response, FindingKind.SEQUENCE_GAP);
    assert.deepEqual(
      gaps.map((finding) => [finding.subject, finding.detail]),
      [[`sequence ${sequence + 1n}`, `expected ${sequence}`]],
      described(response).join("\n"),
    );
    assert.deepEqual(findingsOf(response, FindingKind.HASH_MISMATCH).map((finding) => finding.subject), [`batch ${batch}`]);
    await close();
  });

  it("reports a deleted single-transfer batch once, not every batch after it", async () => {
    const { url, ledger, ids, close } = await seededLedger("lone");
    const { sequence, batch } = await tamper(url, async (sql) => {
      const [row] = await sql`delete from ledger.transfers where id = ${ids.lone} returning sequence::text, batch::text`;
      return { sequence: BigInt(row?.sequence), batch: row?.batch as string };
    });
    const response = await verify(ledger);
    assert.deepEqual(findingsOf(response, FindingKind.SEQUENCE_GAP).map((finding) => finding.subject), [`sequence ${sequence + 1n}`]);
    assert.deepEqual(findingsOf(response, FindingKind.HASH_MISMATCH).map((finding) => finding.subject), [`batch ${batch}`], described(response).join("\n"));
    await close();
  });

  it("reports DEBITS_NOT_EQUAL_CREDITS after one account's debits_posted was bumped alone", async () => {
    const { url, ledger, accounts, close } = await seededLedger("sides");
    await tamper(url, (sql) => sql`update ledger.accounts set debits_posted = debits_posted + 1 where id = ${accounts.source}`);
    const response = await verify(ledger);
    const sides = findingsOf(response, FindingKind.DEBITS_NOT_EQUAL_CREDITS);
    assert.equal(sides.length, 1, described(response).join("\n"));
    assert.equal(sides[0]?.subject, "currency NGN");
    const [, debits, credits] = /^debits (\d+), credits (\d+)$/.exec(sides[0]?.detail ?? "") ?? [];
    assert.equal(BigInt(debits ?? -1) - BigInt(credits ?? 0), 1n);
    assert.deepEqual(findingsOf(response, FindingKind.BALANCE_MISMATCH).map((finding) => finding.subject), [`account ${accounts.source} debits_posted`]);
    await close();
  });

  it("cannot be tampered with by a plain UPDATE or DELETE: the append-only triggers refuse them", async () => {
    const { url, ledger, ids, close } = await seededLedger("guards");
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    try {
      const refused = (error: unknown) => {
        const { code, message } = error as { code?: string; message?: string };
        assert.equal(code, "42501");
        assert.match(message ?? "", /ledger journal is append-only: (UPDATE|DELETE) on ledger\.(transfers|journal_batches) refused/);
        return true;
      };
      await assert.rejects(sql`update ledger.transfers set amount_minor = amount_minor + 1 where id = ${ids.aliceToBob}`, refused);
      await assert.rejects(sql`delete from ledger.transfers where id = ${ids.lone}`, refused);
      await assert.rejects(sql`update ledger.journal_batches set hash = previous_hash`, refused);
      await assert.rejects(sql`delete from ledger.journal_batches`, refused);
      const [row] = await sql`select amount_minor::text from ledger.transfers where id = ${ids.aliceToBob}`;
      assert.equal(row?.amount_minor, "500");
    } finally {
      await sql.end();
    }
    assert.deepEqual(described(await verify(ledger)), []);
    await close();
  });

  it("refuses a journal row whose account does not exist in its currency, and keeps accounts from being deleted or renamed", async () => {
    const { url, ledger, accounts, close } = await seededLedger("accounts");
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    const failsWith = (code: string, pattern: RegExp) => (error: unknown) => {
      const { code: actual, message } = error as { code?: string; message?: string };
      assert.equal(actual, code, message);
      assert.match(message ?? "", pattern);
      return true;
    };
    const insert = (id: string, sequence: number, debit: string, credit: string, currency: string) => sql`
      insert into ledger.transfers (id, sequence, batch, kind, debit_account_id, credit_account_id, amount_minor, currency, code, reference, metadata, linked, pending_id, timeout_seconds, created_at)
      values (${id}, ${sequence}, 999, ${TransferKind.POSTED}, ${debit}, ${credit}, 1, ${currency}, 1, '', '{}', false, '', 0, now())`;
    try {
      const { alice, bob } = accounts;
      await assert.rejects(insert("ghost-credit", 1_000_001, alice, "nobody", "NGN"), failsWith("23503", /names account nobody in NGN, which does not exist/));
      await assert.rejects(insert("ghost-debit", 1_000_002, "nobody", bob, "NGN"), failsWith("23503", /names account nobody in NGN/));
      await assert.rejects(insert("wrong-currency", 1_000_003, alice, bob, "KES"), failsWith("23503", /names account (alice|bob) in KES/));
      // A statement is checked as a whole: one bad row among good ones refuses all of them.
      await assert.rejects(
        sql`insert into ledger.transfers (id, sequence, batch, kind, debit_account_id, credit_account_id, amount_minor, currency, code, reference, metadata, linked, pending_id, timeout_seconds, created_at)
          select 'many-' || g, 2000000 + g, 999, ${TransferKind.POSTED}, ${alice}, case when g = 7 then 'nobody' else ${bob} end, 1, 'NGN', 1, '', '{}', false, '', 0, now()
          from generate_series(1, 10) g`,
        failsWith("23503", /names account nobody in NGN/),
      );
      const guard = /ledger accounts are closed, never deleted, and keep their id and currency: (DELETE|TRUNCATE|UPDATE) on ledger\.accounts refused/;
      await assert.rejects(sql`delete from ledger.accounts where id = ${bob}`, failsWith("42501", guard));
      await assert.rejects(sql`truncate ledger.accounts cascade`, failsWith("42501", guard));
      await assert.rejects(sql`update ledger.accounts set id = 'robert' where id = ${bob}`, failsWith("42501", guard));
      await assert.rejects(sql`update ledger.accounts set currency = 'KES' where id = ${bob}`, failsWith("42501", guard));
      // Setting them to what they are is no change, and closing stays possible.
      await sql`update ledger.accounts set id = id, currency = currency, closed = closed where id = ${bob}`;
      // Ids compare byte by byte (migration 0005), whatever the server's collation.
      const collations = await sql<{ column: string; collation: string | null }[]>`
        select table_name || '.' || column_name as column, collation_name as collation from information_schema.columns
        where table_schema = 'ledger' and (column_name in ('id', 'debit_account_id', 'credit_account_id', 'pending_id', 'resolved_by'))
          and table_name in ('accounts', 'transfers', 'pending_transfers', 'transfer_failures')
          and not (table_name = 'transfer_failures' and column_name <> 'id')
        order by 1`;
      assert.deepEqual(collations.map((row) => `${row.column} ${row.collation}`), [
        "accounts.id C",
        "pending_transfers.id C",
        "pending_transfers.resolved_by C",
        "transfer_failures.id C",
        "transfers.credit_account_id C",
        "transfers.debit_account_id C",
        "transfers.id C",
        "transfers.pending_id C",
      ]);
      const [row] = await sql`select count(*)::int as n from ledger.transfers where id like 'ghost-%' or id like 'many-%' or id = 'wrong-currency'`;
      assert.equal(row?.n, 0);
    } finally {
      await sql.end();
    }
    assert.deepEqual(described(await verify(ledger)), []);
    await close();
  });
});

interface ScriptRun {
  code: number;
  stdout: string;
  stderr: string;
}

function runVerifyScript(databaseUrl: string | undefined): Promise<ScriptRun> {
  const env = { ...process.env };
  delete env.DATABASE_URL;
  if (databaseUrl !== undefined) env.DATABASE_URL = databaseUrl;
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import", "tsx", "scripts/ledger-verify.ts"], { cwd: ROOT, env, timeout: 20_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function lastJson(stdout: string): Record<string, number> {
  const lines = stdout.trimEnd().split("\n");
  return JSON.parse(lines[lines.length - 1] as string) as Record<string, number>;
}

describe("npm run ledger:verify (scripts/ledger-verify.ts)", () => {
  it("exits 0 with the counts as its last JSON line on a clean journal, 1 once it was tampered with", async () => {
    const { url, ledger, accounts, close } = await seededLedger("script");
    const response = await verify(ledger);
    const clean = await runVerifyScript(url);
    assert.equal(clean.code, 0, clean.stderr);
    assert.deepEqual(lastJson(clean.stdout), {
      transfers_checked: Number(response.transfersChecked),
      batches_checked: Number(response.batchesChecked),
      accounts_checked: Number(response.accountsChecked),
      findings: 0,
    });
    assert.match(clean.stdout, /transfers checked: 11\n/);

    await tamper(url, (sql) => sql`update ledger.accounts set debits_posted = debits_posted + 1 where id = ${accounts.source}`);
    const tampered = await runVerifyScript(url);
    assert.equal(tampered.code, 1, tampered.stderr);
    const summary = lastJson(tampered.stdout);
    assert.equal(summary.findings, 2);
    assert.equal(summary.transfers_checked, 11);
    assert.match(tampered.stdout, /^DEBITS_NOT_EQUAL_CREDITS currency NGN — debits \d+, credits \d+$/m);
    assert.match(tampered.stdout, new RegExp(`^BALANCE_MISMATCH account ${accounts.source} debits_posted — stored \\d+, journal says \\d+$`, "m"));
    await close();
  });

  it("exits 2 with a one-line message when DATABASE_URL is unset", async () => {
    const run = await runVerifyScript(undefined);
    assert.equal(run.code, 2);
    assert.equal(run.stdout, "");
    assert.equal(run.stderr.trimEnd().split("\n").length, 1);
    assert.match(run.stderr, /DATABASE_URL/);
  });
});
