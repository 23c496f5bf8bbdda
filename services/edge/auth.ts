// Who is calling. Tenants call the public services with an API key (`Authorization: Bearer
// ck_...`) that names their tenant and scope; operators call AdminService with the operator
// token. Every failure is UNAUTHENTICATED and says which of missing / malformed / unknown /
// revoked it was, never anything about other keys.
import { mkdir, open, readFile } from "node:fs/promises";
import * as path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import type { Config } from "../runtime/config.js";
import type { Db } from "../runtime/db.js";
import type { Logger } from "../runtime/log.js";
import { bearerToken, newOperatorToken, parseApiKey, secretMatches, tokensEqual } from "./credentials.js";
import { SCOPE, apiKeys } from "./schema.js";

export const AUTHORIZATION_HEADER = "authorization";

/** The tenant and limits an authenticated API key acts with. */
export interface Caller {
  readonly tenantId: string;
  readonly keyId: string;
  readonly canWrite: boolean;
  readonly ratePerSecond: number;
  readonly burst: number;
}

type KeyRow = Pick<
  typeof apiKeys.$inferSelect,
  "id" | "tenantId" | "secretHash" | "scope" | "rateLimitPerSecond" | "rateLimitBurst" | "revokedAt"
>;

/**
 * Key lookups are cached in this process for at most KEY_CACHE_TTL_MS, hits and misses alike, so
 * a busy key costs one database read per 2 s instead of one per call. The price: a key revoked
 * through another Edge process keeps working here for up to 2 s (a revocation through this
 * process drops the entry at once). A key created after a miss for its id was cached would be
 * refused for as long; ids are random, so that only happens to someone guessing.
 */
export const KEY_CACHE_TTL_MS = 2_000;
const KEY_CACHE_MAX_ENTRIES = 10_000;

function unauthenticated(message: string): ConnectError {
  return new ConnectError(message, Code.Unauthenticated);
}

export class ApiKeyAuthenticator {
  private readonly cache = new Map<string, { row: Promise<KeyRow | undefined>; expiresAtMs: number }>();

  constructor(
    private readonly db: Db,
    private readonly config: Pick<Config, "rateLimitPerSecond" | "rateLimitBurst">,
  ) {}

  /** The caller of a public RPC, from its Authorization header; UNAUTHENTICATED otherwise. */
  async authenticate(header: Headers): Promise<Caller> {
    const authorization = header.get(AUTHORIZATION_HEADER);
    if (!authorization) throw unauthenticated("missing API key: send the header Authorization: Bearer ck_...");
    const token = bearerToken(authorization);
    const parsed = token === undefined ? undefined : parseApiKey(token);
    if (!parsed) throw unauthenticated("malformed API key: expected Authorization: Bearer ck_<key id>_<secret>");
    const row = await this.lookup(parsed.id);
    if (!row || !secretMatches(parsed.secret, row.secretHash)) throw unauthenticated(`unknown API key ${parsed.id}`);
    if (row.revokedAt) throw unauthenticated(`API key ${parsed.id} was revoked`);
    return {
      tenantId: row.tenantId,
      keyId: row.id,
      canWrite: row.scope === SCOPE.readWrite,
      ratePerSecond: row.rateLimitPerSecond ?? this.config.rateLimitPerSecond,
      burst: row.rateLimitBurst ?? this.config.rateLimitBurst,
    };
  }

  /** Drops a cached key, after it was revoked through this process. */
  forget(keyId: string): void {
    this.cache.delete(keyId);
  }

  private lookup(keyId: string): Promise<KeyRow | undefined> {
    const nowMs = Date.now();
    const cached = this.cache.get(keyId);
    if (cached && cached.expiresAtMs > nowMs) return cached.row;
    if (this.cache.size >= KEY_CACHE_MAX_ENTRIES) this.cache.clear();
    // Concurrent calls with one key share one read.
    const row = this.db
      .select({
        id: apiKeys.id,
        tenantId: apiKeys.tenantId,
        secretHash: apiKeys.secretHash,
        scope: apiKeys.scope,
        rateLimitPerSecond: apiKeys.rateLimitPerSecond,
        rateLimitBurst: apiKeys.rateLimitBurst,
        revokedAt: apiKeys.revokedAt,
      })
      .from(apiKeys)
      .where(eq(apiKeys.id, keyId))
      .then((rows) => rows[0]);
    const entry = { row, expiresAtMs: nowMs + KEY_CACHE_TTL_MS };
    this.cache.set(keyId, entry);
    // A failed read (database down) is not remembered: the next call tries again.
    row.catch(() => {
      if (this.cache.get(keyId) === entry) this.cache.delete(keyId);
    });
    return row;
  }
}

export const OPERATOR_TOKEN_FILE = "operator-token";

/**
 * The operator token: COWRIE_OPERATOR_TOKEN, or else the one in <COWRIE_DATA_DIR>/operator-token,
 * created (random, mode 0600) on the first start. Its location is logged, never the token.
 */
export async function loadOperatorToken(config: Pick<Config, "operatorToken" | "dataDir">, log?: Logger): Promise<string> {
  if (config.operatorToken) return config.operatorToken;
  const file = path.resolve(config.dataDir, OPERATOR_TOKEN_FILE);
  await mkdir(path.dirname(file), { recursive: true });
  try {
    const handle = await open(file, "wx", 0o600);
    try {
      await handle.writeFile(`${newOperatorToken()}\n`);
    } finally {
      await handle.close();
    }
    log?.info({ file }, "created the operator token for AdminService (COWRIE_OPERATOR_TOKEN is unset)");
  } catch (error) {
    if ((error as { code?: string }).code !== "EEXIST") throw error;
    log?.info({ file }, "operator token for AdminService read from file (COWRIE_OPERATOR_TOKEN is unset)");
  }
  const token = (await readFile(file, "utf8")).trim();
  if (token.length < 16) throw new Error(`${file} holds no usable operator token (at least 16 characters)`);
  return token;
}

/** Refuses an AdminService call that does not carry the operator token. */
export function requireOperator(header: Headers, operatorToken: string): void {
  const authorization = header.get(AUTHORIZATION_HEADER);
  if (!authorization) throw unauthenticated("missing operator token: send the header Authorization: Bearer <operator token>");
  const token = bearerToken(authorization);
  if (token === undefined || !tokensEqual(token, operatorToken)) throw unauthenticated("wrong operator token");
}
