// PostgreSQL for every service, through drizzle-orm. With DATABASE_URL set each service gets its
// own postgres.js pool; without it, every service in the process shares one embedded PGlite
// database under COWRIE_DATA_DIR. Each service keeps its tables in its own schema ("ledger",
// "wallet"...) and applies its drizzle-kit migrations at start-up.
import { mkdir, open, readFile, rm } from "node:fs/promises";
import * as path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { sql } from "drizzle-orm";
import { PgDialect, type PgDatabase, type PgQueryResultHKT } from "drizzle-orm/pg-core";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { migrate as migratePglite } from "drizzle-orm/pglite/migrator";
import { drizzle as drizzlePostgres, PostgresJsSession, PostgresJsTransaction } from "drizzle-orm/postgres-js";
import { migrate as migratePostgres } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";
import { currentCallContext } from "./call-context.js";
import { backoffMs } from "./pause.js";

/** The drizzle database a service uses, the same type on postgres.js and on PGlite. */
export type Db = PgDatabase<PgQueryResultHKT>;
export type Tx = Parameters<Parameters<Db["transaction"]>[0]>[0];

export interface Database {
  readonly kind: "postgres" | "pglite";
  readonly db: Db;
  /** Applies the service's migrations; concurrent start-ups of the same service wait in turn. */
  migrate(service: string, migrationsFolder: string): Promise<void>;
  /** One round trip; rejects while the database is unreachable. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

const MIGRATIONS_SCHEMA = "cowrie_migrations";

export function createPostgresDatabase(url: string, options: { poolMax: number; applicationName: string }): Database {
  const client = postgres(url, {
    max: options.poolMax,
    // int8 comes back as bigint, never as a float or a string: money is int64.
    types: { bigint: postgres.BigInt },
    connect_timeout: 5,
    idle_timeout: 60,
    max_lifetime: 30 * 60,
    connection: { application_name: options.applicationName },
    onnotice: () => {},
    // After a restart of PostgreSQL the pool is back within 2 s of it (postgres.js waits up to 20 s).
    backoff: (attempt) => backoffMs(attempt, 50, 2_000, "equal") / 1000,
  });
  const db = drizzlePostgres({ client: preparing(client) }) as unknown as Db;
  return {
    kind: "postgres",
    db,
    async migrate(service, migrationsFolder) {
      // A session-level advisory lock on a reserved connection serializes concurrent start-ups
      // (several replicas, or compose starting everything at once). One lock for all services,
      // not one each: every service's migrator first creates the shared cowrie_migrations
      // schema, and two CREATE SCHEMA IF NOT EXISTS racing on an empty database collide.
      const reserved = await client.reserve();
      try {
        await reserved`select pg_advisory_lock(hashtext('cowrie:migrate'))`;
        await migratePostgres(db as never, { migrationsFolder, migrationsSchema: MIGRATIONS_SCHEMA, migrationsTable: service });
      } finally {
        await reserved`select pg_advisory_unlock(hashtext('cowrie:migrate'))`.catch(() => {});
        reserved.release();
      }
    },
    async ping() {
      await client`select 1`;
    },
    async close() {
      await client.end({ timeout: 5 });
    },
  };
}

/** Distinct statement texts a process prepares at most, and the most parameters one may have. */
const PREPARED_TEXTS_MAX = 1_000;
const PREPARED_PARAMETERS_MAX = 64;
const preparedTexts = new Set<string>();

/**
 * drizzle asks postgres.js for an unnamed statement unless a query was given a name, and
 * postgres.js sends a parameterised unnamed statement in two round trips (Parse and Describe,
 * wait for the parameter types, then Bind and Execute), which PostgreSQL parses and plans every
 * time. Prepared, a statement that ran before on the connection is one round trip and no parse.
 * Bounded, since the server keeps each prepared statement for the connection's life: texts with
 * many parameters (batch inserts, long IN lists) and texts past the first PREPARED_TEXTS_MAX
 * distinct ones stay unnamed.
 */
function preparing<T extends postgres.Sql | postgres.TransactionSql>(client: T): T {
  return new Proxy(client, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== "function") return value;
      if (property === "unsafe") {
        return (query: string, parameters?: unknown[], options?: postgres.UnsafeQueryOptions) =>
          value.call(target, query, parameters, { ...options, prepare: preparable(query, parameters?.length ?? 0) });
      }
      if (property === "begin" || property === "savepoint") {
        return (...args: unknown[]) => {
          const body = args.pop() as (tx: postgres.TransactionSql) => unknown;
          return value.call(target, ...args, (tx: postgres.TransactionSql) => body(preparing(tx)));
        };
      }
      return value;
    },
  });
}

function preparable(query: string, parameterCount: number): boolean {
  if (parameterCount > PREPARED_PARAMETERS_MAX) return false;
  if (preparedTexts.has(query)) return true;
  if (preparedTexts.size >= PREPARED_TEXTS_MAX) return false;
  preparedTexts.add(query);
  return true;
}

/**
 * The embedded default: one PGlite per process, shared by every service in it. PGlite has a
 * single connection; drizzle runs each transaction exclusively on it, so correctness holds and
 * concurrency is simply one transaction at a time.
 */
export async function openEmbeddedDatabase(dataDir: string): Promise<{ database(): Database; close(): Promise<void> }> {
  const folder = path.resolve(dataDir, "pglite");
  await mkdir(folder, { recursive: true });
  const releaseLock = await lockDataDir(path.resolve(dataDir, "pglite.lock"));
  const client = await PGlite.create(folder, { relaxedDurability: false }).catch(async (error: unknown) => {
    await releaseLock();
    throw error;
  });
  const db = drizzlePglite({ client }) as unknown as Db;
  let migrating = Promise.resolve();
  const database: Database = {
    kind: "pglite",
    db,
    async migrate(service, migrationsFolder) {
      // One connection: migrations of the services in this process run one after another.
      const run = migrating.then(() =>
        migratePglite(db as never, { migrationsFolder, migrationsSchema: MIGRATIONS_SCHEMA, migrationsTable: service }),
      );
      migrating = run.catch(() => {});
      await run;
    },
    async ping() {
      await db.execute(sql`select 1`);
    },
    // The process closes the shared instance once, after every service has stopped.
    async close() {},
  };
  return {
    database: () => database,
    async close() {
      await client.close();
      await releaseLock();
    },
  };
}

/**
 * PGlite's files must have one process at a time: a second process on the same folder corrupts
 * it. A lock file holding the owner's pid refuses the second start, and is taken over when its
 * owner is gone (a crash leaves it behind).
 */
async function lockDataDir(lockPath: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(lockPath, "wx");
      await handle.writeFile(String(process.pid));
      await handle.close();
      return () => rm(lockPath, { force: true });
    } catch (error) {
      if ((error as { code?: string }).code !== "EEXIST") throw error;
      const owner = Number(await readFile(lockPath, "utf8").catch(() => "0"));
      if (owner > 0 && owner !== process.pid && isAlive(owner)) {
        throw new Error(`the embedded database in ${path.dirname(lockPath)} is in use by process ${owner}; stop it or set COWRIE_DATA_DIR`);
      }
      await rm(lockPath, { force: true });
    }
  }
  throw new Error(`could not lock ${lockPath}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as { code?: string }).code === "EPERM";
  }
}

/**
 * Runs a write in a transaction bound to the call's deadline: it does not start once the call is
 * over and it rolls back instead of committing when the deadline passed meanwhile. Without this,
 * a statement queued on a connection that is being re-established runs whenever the database
 * comes back, long after the caller was told DEADLINE_EXCEEDED.
 */
export async function transact<T>(db: Db, work: (tx: Tx) => Promise<T>, signal = currentCallContext()?.signal): Promise<T> {
  // BEGIN goes out with the first statement of `work` (see transactPipelined).
  return transactPipelined(db, async (tx) => ({ result: await work(tx), finish: [] }), signal ?? null);
}

/** A statement a pipelined transaction ends with: a drizzle query, not yet run (not awaited). */
export interface FinishingStatement extends PromiseLike<unknown> {
  toSQL(): { sql: string; params: unknown[] };
}

const pipelineDialect = new PgDialect();

/**
 * A transaction in as few socket writes as its statements allow. drizzle's transactions take one
 * for BEGIN, one per statement and one for COMMIT; here BEGIN goes out with the first statement
 * `work` runs, and the statements `work` returns, those whose results it does not need, go out in
 * one write with the COMMIT. A read-or-insert, decide, then write transaction (a payment, its
 * history and its events) is two writes. Each write is a system call that wakes PostgreSQL, and on
 * these machines it costs about as much CPU as drizzle's building of the statement.
 *
 * `work` runs its statements on `tx` as usual, and must not run those it returns, nor open a
 * nested transaction (a savepoint) on `tx`. A failure anywhere rolls everything back (a COMMIT
 * after a failed statement is a ROLLBACK) and the first error is thrown. `signal`, as for
 * `transact` (null: not bound to a call): nothing starts once it has fired, and the finishing
 * statements are not sent when it fired during `work`. On PGlite (one connection, no pipelining)
 * it is a plain transaction, the finishing statements run one after another.
 */
export async function transactPipelined<T>(
  db: Db,
  work: (tx: Tx) => Promise<{ result: T; finish: readonly FinishingStatement[] }>,
  signal: AbortSignal | null = currentCallContext()?.signal ?? null,
): Promise<T> {
  signal?.throwIfAborted();
  const client = (db as { $client?: unknown }).$client;
  if (!isPostgresJs(client)) {
    return db.transaction(async (tx) => {
      const { result, finish } = await work(tx);
      signal?.throwIfAborted();
      for (const statement of finish) await statement;
      return result;
    });
  }
  const reserved = await client.reserve();
  const connection = preparing(reserved);
  // Sent at once, so it leaves ahead of (and in the same write as) the first statement of `work`.
  const begin = connection.unsafe("begin").execute();
  begin.catch(() => {});
  // drizzle's own transaction classes over the reserved connection: `tx` is a Tx like any other.
  const session = new PostgresJsSession(connection as unknown as postgres.Sql, pipelineDialect, undefined);
  const tx = new PostgresJsTransaction(pipelineDialect, session as never, undefined) as unknown as Tx;
  let open = true;
  try {
    const { result, finish } = await work(tx);
    await begin;
    signal?.throwIfAborted();
    // In order, in this tick: postgres.js writes them together, COMMIT last.
    const statements = finish.map((statement) => {
      const { sql: text, params } = statement.toSQL();
      return connection.unsafe(text, params as postgres.ParameterOrJSON<never>[]).execute();
    });
    const commit = connection.unsafe("commit").execute();
    const settled = await Promise.allSettled([...statements, commit]);
    open = false;
    const failed = settled.find((outcome): outcome is PromiseRejectedResult => outcome.status === "rejected");
    if (failed) throw failed.reason;
    return result;
  } catch (error) {
    if (open) await connection.unsafe("rollback").catch(() => {});
    throw error;
  } finally {
    reserved.release();
  }
}

function isPostgresJs(client: unknown): client is postgres.Sql {
  return typeof client === "function" && typeof (client as { reserve?: unknown }).reserve === "function";
}

/** Rows of a raw `db.execute` result, which postgres.js returns as an array and PGlite as { rows }. */
export function rowsOf<T>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  return ((result as { rows?: T[] }).rows ?? []) as T[];
}
