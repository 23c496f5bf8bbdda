// The postgres.js database every service uses, against the real PostgreSQL: drizzle's queries
// run as prepared statements (one round trip once the connection has seen the text), within
// bounds.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { sql } from "drizzle-orm";
import { createPostgresDatabase, rowsOf, type Database } from "./db.js";
import { freshDatabase } from "./testing.js";

let fresh: Awaited<ReturnType<typeof freshDatabase>>;
let database: Database;

before(async () => {
  fresh = await freshDatabase("runtime_db");
  // One connection, so that pg_prepared_statements shows what the queries above it left.
  database = createPostgresDatabase(fresh.url, { poolMax: 1, applicationName: "db-test" });
});

after(async () => {
  await database.close();
  await fresh.drop();
});

/** The connection's prepared statements whose text contains `marker`. */
async function preparedWith(marker: string): Promise<string[]> {
  const rows = rowsOf<{ statement: string }>(await database.db.execute(sql`select statement from pg_prepared_statements`));
  return rows.map((row) => row.statement).filter((text) => text.includes(marker));
}

describe("postgres.js through drizzle", () => {
  it("prepares a parameterised statement once per connection and reuses it, in and out of transactions", async () => {
    for (let round = 1n; round <= 3n; round++) {
      const [row] = rowsOf<{ sum: bigint }>(await database.db.execute(sql`select ${round}::int8 + 1 as sum /* marker-a */`));
      assert.equal(row?.sum, round + 1n);
      await database.db.transaction(async (tx) => {
        const [inner] = rowsOf<{ text: string }>(await tx.execute(sql`select ${`in-${round}`}::text as text /* marker-b */`));
        assert.equal(inner?.text, `in-${round}`);
      });
    }
    assert.equal((await preparedWith("marker-a")).length, 1);
    assert.equal((await preparedWith("marker-b")).length, 1);
  });

  it("leaves a statement with many parameters unnamed: batch texts vary with their size", async () => {
    const values = Array.from({ length: 65 }, (_, index) => sql`(${index}::int)`);
    const rows = rowsOf<{ n: number }>(await database.db.execute(sql`select count(*)::int as n from (values ${sql.join(values, sql`, `)}) as v(x) /* marker-c */`));
    assert.equal(rows[0]?.n, 65);
    assert.deepEqual(await preparedWith("marker-c"), []);
  });
});
