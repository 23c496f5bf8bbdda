// The postgres.js database every service uses, against the real PostgreSQL: drizzle's queries
// run as prepared statements (one round trip once the connection has seen the text), within
// bounds; and a connection cut while it starts fails its query without taking the process down.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { Column, is, sql, SQL, Table, View } from "drizzle-orm";
import { integer, PgColumn, PgTable, pgTable, text } from "drizzle-orm/pg-core";
import { createPostgresDatabase, openEmbeddedDatabase, rowsOf, transactPipelined, type Database, type Db } from "./db.js";
import { pause } from "./pause.js";
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

describe("connections cut while they start", () => {
  it("fail what was asked on them, never crash the process, and the pool connects again", async () => {
    // Each new connection first reads the server's array types. postgres.js 3.4.9 unpatched
    // (patches/postgres+3.4.9.patch) rejects a promise nobody handles when the connection dies
    // during that read, and the process ends. A proxy cuts the first connections just then.
    const target = new URL(fresh.url);
    const proxy = await cutAfterStartup({ host: target.hostname, port: Number(target.port || 5432) }, 3);
    const url = new URL(fresh.url);
    url.host = `127.0.0.1:${proxy.port}`;
    const cut = createPostgresDatabase(url.toString(), { poolMax: 1, applicationName: "db-test-cut" });
    const escaped: unknown[] = [];
    const record = (error: unknown) => escaped.push(error);
    process.on("unhandledRejection", record);
    process.on("uncaughtException", record);
    try {
      let failures = 0;
      let answer: number | undefined;
      const giveUpAt = Date.now() + 15_000;
      while (answer === undefined && Date.now() < giveUpAt) {
        try {
          answer = rowsOf<{ n: number }>(await cut.db.execute(sql`select ${7}::int as n`))[0]?.n;
        } catch {
          failures++;
        }
      }
      await pause(100);
      assert.deepEqual(escaped.map(String), []);
      assert.equal(proxy.cuts(), 3);
      assert.ok(failures >= 1, "the queries on cut connections failed");
      assert.equal(answer, 7);
    } finally {
      process.off("unhandledRejection", record);
      process.off("uncaughtException", record);
      await cut.close();
      await proxy.close();
    }
  });
});

describe("connections that close in use (patches/postgres+3.4.9.patch)", () => {
  // PostgreSQL ends a connection's session: pg_terminate_backend here, a restart or a failover in
  // production. Unpatched, postgres.js 3.4.9 then left promises that never settle: a transaction
  // waiting for its connection hung for ever, and so did the service's pass that started it (the
  // chaos run's relays and completers after `postgres:restart`).
  let cut: Database;

  before(async () => {
    cut = createPostgresDatabase(fresh.url, { poolMax: 1, applicationName: "db-test-closing" });
    await database.db.execute(sql`create table if not exists closing_probe (id text primary key)`);
  });

  after(async () => {
    await cut.close();
  });

  /** `promise`, or "pending" if it has not settled within `ms`. */
  async function within<T>(promise: Promise<T>, ms: number): Promise<{ value?: T; error?: unknown } | "pending"> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"pending">((resolve) => (timer = setTimeout(() => resolve("pending"), ms)));
    try {
      return await Promise.race([promise.then((value) => ({ value }), (error: unknown) => ({ error })), late]);
    } finally {
      clearTimeout(timer);
    }
  }

  const terminate = (pid: number) => database.db.execute(sql`select pg_terminate_backend(${pid})`);
  const backendPid = async (tx: Db) => rowsOf<{ pid: number }>(await tx.execute(sql`select pg_backend_pid() as pid`))[0]?.pid as number;
  const probeIds = async () => rowsOf<{ id: string }>(await database.db.execute(sql`select id from closing_probe order by id`)).map((row) => row.id);

  it("a transaction waiting for the pool's only connection gets it back when that connection is cut, and the cut one fails", async () => {
    let holding!: (pid: number) => void;
    const held = new Promise<number>((resolve) => (holding = resolve));
    let letGo!: () => void;
    const goOn = new Promise<void>((resolve) => (letGo = resolve));
    const first = transactPipelined(cut.db, async (tx) => {
      holding(await backendPid(tx));
      await goOn;
      await tx.execute(sql`insert into closing_probe values ('first')`);
      return { result: "first", finish: [] };
    }, null);
    const pid = await held;
    // Waits for the only connection; upstream issue #1195 dropped this wait when the connection
    // it waited on closed and came back.
    const second = transactPipelined(cut.db, async (tx) => ({ result: await backendPid(tx), finish: [] }), null);
    await terminate(pid);
    await pause(200);
    letGo();
    const [firstOutcome, secondOutcome] = await Promise.all([within(first, 5_000), within(second, 5_000)]);
    assert.notEqual(firstOutcome, "pending", "the cut transaction settled");
    assert.ok(firstOutcome !== "pending" && firstOutcome.error, "the cut transaction failed");
    assert.notEqual(secondOutcome, "pending", "the waiting transaction settled");
    assert.ok(secondOutcome !== "pending" && typeof secondOutcome.value === "number" && secondOutcome.value !== pid, "it ran on a new session");
    assert.deepEqual(await probeIds(), [], "nothing of the cut transaction was written");
    assert.equal(rowsOf<{ n: number }>(await cut.db.execute(sql`select 1 as n`))[0]?.n, 1, "the pool works");
  });

  it("a statement a drizzle transaction sends after its connection was cut fails, and never runs on the next session", async () => {
    // The transaction fails as its connection closes, but its callback runs on (upstream issues
    // #1186 and #1215): what it sends later went to the connection's next session, outside any
    // transaction, or waited for ever.
    let callbackDone!: (sent: { statement: Promise<unknown> }) => void;
    const sentLater = new Promise<{ statement: Promise<unknown> }>((resolve) => (callbackDone = resolve));
    const transaction = cut.db.transaction(async (tx) => {
      const pid = await backendPid(tx);
      await terminate(pid);
      // Something else keeps the pool busy, so the connection comes back at once for it.
      const other = cut.db.execute(sql`select 1`);
      await pause(300);
      const statement = tx.execute(sql`insert into closing_probe values ('after-the-cut')`);
      callbackDone({ statement });
      await Promise.all([statement, other]);
    });
    const outcome = await within(transaction, 5_000);
    assert.ok(outcome !== "pending" && outcome.error, "the transaction failed");
    const sent = await within((await sentLater).statement, 5_000);
    assert.ok(sent !== "pending" && sent.error, "the statement failed instead of hanging");
    assert.deepEqual(await probeIds(), [], "it did not run outside the transaction");
    assert.equal(rowsOf<{ n: number }>(await cut.db.execute(sql`select 1 as n`))[0]?.n, 1, "the pool works");
  });
});

/**
 * A TCP proxy to PostgreSQL that cuts each of the first `count` connections as soon as the client
 * sends something after the server's first ReadyForQuery (the end of the start-up), with a reset.
 */
async function cutAfterStartup(target: { host: string; port: number }, count: number) {
  let cuts = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("error", () => socket.destroy());
      socket.on("close", () => sockets.delete(socket));
    }
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    let started = false;
    let pending = Buffer.alloc(0);
    upstream.on("data", (data: Buffer) => {
      // Server messages: a type byte and a 4-byte length that counts itself.
      pending = Buffer.concat([pending, data]);
      while (!started && pending.length >= 5 && pending.length >= 1 + pending.readUInt32BE(1)) {
        started = pending[0] === 0x5a; // 'Z'
        pending = pending.subarray(1 + pending.readUInt32BE(1));
      }
      client.write(data);
    });
    client.on("data", (data: Buffer) => {
      if (started && cuts < count) {
        cuts++;
        client.resetAndDestroy(); // ECONNRESET at the client, as when the server's host goes away
        upstream.destroy();
        return;
      }
      upstream.write(data);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    cuts: () => cuts,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe("drizzle's is(), patched (patches/drizzle-orm+0.45.4.patch)", () => {
  it("answers as upstream's does: subclasses match, unrelated entities and plain values do not (and a null-prototype value is none, where upstream throws)", () => {
    const table = pgTable("is_probe", { id: text("id") });
    const fragment = sql`select 1`;
    assert.deepEqual(
      [is(table, Table), is(table, PgTable), is(table.id, Column), is(table.id, PgColumn), is(fragment, SQL)],
      [true, true, true, true, true],
    );
    assert.deepEqual(
      [is(table, Column), is(table.id, Table), is(fragment, Table), is(table, View), is({}, SQL), is(Object.create(null), SQL), is("x", SQL), is(null, SQL)],
      [false, false, false, false, false, false, false, false],
    );
    class NotAnEntity {}
    assert.throws(() => is(table, NotAnEntity as unknown as typeof Table), /doesn't look like a Drizzle entity/);
  });
});

describe("transactPipelined", () => {
  const probe = pgTable("pipelined_probe", { id: integer("id").primaryKey(), note: text("note").notNull() });
  const ids = async (db: Db) => rowsOf<{ id: number }>(await db.execute(sql`select id from pipelined_probe order by id`)).map((row) => row.id);

  /** The same outcomes on postgres.js (pipelined) and on PGlite (statement by statement). */
  async function outcomes(db: Db): Promise<void> {
    await db.execute(sql`create table if not exists pipelined_probe (id int primary key, note text not null)`);
    await db.execute(sql`truncate pipelined_probe`);

    const written = await transactPipelined(db, async (tx) => {
      const [first] = await tx.insert(probe).values({ id: 1, note: "work" }).returning();
      return { result: first?.note, finish: [tx.insert(probe).values({ id: 2, note: "finish" }), tx.insert(probe).values({ id: 3, note: "finish" })] };
    });
    assert.equal(written, "work");
    assert.deepEqual(await ids(db), [1, 2, 3]);
    const [{ transactions } = { transactions: 0 }] = rowsOf<{ transactions: number }>(await db.execute(sql`select count(distinct xmin::text)::int as transactions from pipelined_probe`));
    assert.equal(transactions, 1, "one transaction wrote all three");

    // A finishing statement fails: the work's statement and the finishing one before it go too.
    await assert.rejects(
      transactPipelined(db, async (tx) => {
        await tx.insert(probe).values({ id: 10, note: "work" });
        return { result: undefined, finish: [tx.insert(probe).values({ id: 11, note: "finish" }), tx.insert(probe).values({ id: 1, note: "duplicate" })] };
      }),
      (error: { code?: string; cause?: { code?: string } }) => (error.code ?? error.cause?.code) === "23505",
    );
    await assert.rejects(
      transactPipelined(db, async (tx) => {
        await tx.insert(probe).values({ id: 20, note: "work" });
        throw new Error("the work failed");
      }),
      /the work failed/,
    );
    // The deadline passes during the work: nothing more is sent, and the work's statement goes.
    const deadline = new AbortController();
    await assert.rejects(
      transactPipelined(db, async (tx) => {
        await tx.insert(probe).values({ id: 30, note: "work" });
        deadline.abort(new Error("deadline passed"));
        return { result: undefined, finish: [tx.insert(probe).values({ id: 31, note: "finish" })] };
      }, deadline.signal),
      /deadline passed/,
    );
    assert.deepEqual(await ids(db), [1, 2, 3], "nothing of the failed transactions was kept");
  }

  it("on postgres.js: commits the work and its finishing statements together, or none of them", async () => {
    await outcomes(database.db);
  });

  it("on PGlite: the same", async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), "cowrie-pipelined-"));
    const embedded = await openEmbeddedDatabase(dataDir);
    try {
      await outcomes(embedded.database().db);
    } finally {
      await embedded.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
