// `npm run ledger:verify`: replays the Ledger's whole journal in the database at DATABASE_URL
// (hash chain, sequence, debits against credits, every account's totals) and reports what it
// found. Prints a human summary, then one line per finding, and as its last line one JSON object
// for machines. Exit code 0: clean; 1: findings; 2: it could not run (no DATABASE_URL, database
// unreachable, no ledger schema).
import { FindingKind } from "../gen/cowrie/ledger/v1/ledger_pb.js";
import { verifyJournal } from "../services/ledger/verifier.js";
import { createPostgresDatabase } from "../services/runtime/db.js";

function fail(message: string): never {
  process.stderr.write(`ledger:verify: ${message}\n`);
  process.exit(2);
}

const url = process.env.DATABASE_URL;
if (!url) fail("DATABASE_URL is not set; point it at the Ledger's PostgreSQL database (postgres://user@host:5432/name)");

const database = createPostgresDatabase(url, { poolMax: 2, applicationName: "cowrie-ledger-verify" });
let exitCode = 2;
try {
  const result = await verifyJournal(database.db);
  const lines = [
    "Ledger journal verification",
    `  transfers checked: ${result.transfersChecked}`,
    `  batches checked:   ${result.batchesChecked}`,
    `  accounts checked:  ${result.accountsChecked}`,
    `  findings:          ${result.findings.length}${result.findings.length === 0 ? " (clean)" : ""}`,
    ...result.findings.map((finding) => `${FindingKind[finding.kind] ?? finding.kind} ${finding.subject} — ${finding.detail}`),
    // Counts are int64: written as exact digits, never through a float.
    `{"transfers_checked":${result.transfersChecked},"batches_checked":${result.batchesChecked},"accounts_checked":${result.accountsChecked},"findings":${result.findings.length}}`,
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
  exitCode = result.findings.length === 0 ? 0 : 1;
} catch (error) {
  // drizzle wraps the driver's error ("Failed query: …"); its cause says what went wrong.
  const cause = error instanceof Error && error.cause instanceof Error ? error.cause : error;
  const reason = cause instanceof Error ? cause.message.split("\n")[0] : String(cause);
  process.stderr.write(`ledger:verify: could not verify the journal: ${reason}\n`);
  exitCode = 2;
} finally {
  await database.close().catch(() => {});
}
process.exitCode = exitCode;
