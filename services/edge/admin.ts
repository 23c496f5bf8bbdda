// AdminService: operators create tenants and manage their API keys. Served on the Edge port
// behind the operator token (endpoints.ts operatorService). A key's secret appears once, in the
// response that created it; only its hash is stored.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { asc, eq, gt, sql } from "drizzle-orm";
import { AdminService, ApiKeySchema, ApiKeyScope, TenantSchema, type ApiKey, type Tenant } from "../../gen/cowrie/edge/v1/admin_pb.js";
import type { Config } from "../runtime/config.js";
import { transact, type Db, type Tx } from "../runtime/db.js";
import { invalidArgument, notFound } from "../runtime/errors.js";
import { limitText, requireEnum, requireId, requirePageSize, requireText } from "../runtime/validate.js";
import type { ApiKeyAuthenticator } from "./auth.js";
import { newApiKey, newTenantId } from "./credentials.js";
import { limitPageToken } from "./fields.js";
import { SCOPE, apiKeys, tenants } from "./schema.js";

type TenantRow = typeof tenants.$inferSelect;
type ApiKeyRow = typeof apiKeys.$inferSelect;

const RATE_OVERRIDE_MAX = 1_000_000;
const TENANT_PAGE_DEFAULT = 20;

function tenantMessage(row: TenantRow): Tenant {
  return create(TenantSchema, { id: row.id, name: row.name, live: row.live, createdAt: timestampFromDate(row.createdAt) });
}

function apiKeyMessage(row: ApiKeyRow, config: Pick<Config, "rateLimitPerSecond" | "rateLimitBurst">): ApiKey {
  return create(ApiKeySchema, {
    id: row.id,
    tenantId: row.tenantId,
    scope: row.scope === SCOPE.readWrite ? ApiKeyScope.READ_WRITE : ApiKeyScope.READ_ONLY,
    label: row.label,
    // The limits in force: the key's own, else the configured defaults.
    rateLimitPerSecond: row.rateLimitPerSecond ?? config.rateLimitPerSecond,
    rateLimitBurst: row.rateLimitBurst ?? config.rateLimitBurst,
    createdAt: timestampFromDate(row.createdAt),
    revokedAt: row.revokedAt ? timestampFromDate(row.revokedAt) : undefined,
  });
}

function rateOverride(value: number, field: string): number | null {
  if (value > RATE_OVERRIDE_MAX) throw invalidArgument(field, `must be at most ${RATE_OVERRIDE_MAX}`);
  return value === 0 ? null : value;
}

async function insertKey(
  tx: Tx,
  fields: { tenantId: string; scope: number; label: string; rateLimitPerSecond: number | null; rateLimitBurst: number | null },
): Promise<{ row: ApiKeyRow; fullKey: string }> {
  const key = newApiKey();
  const [row] = await tx.insert(apiKeys).values({ id: key.id, secretHash: key.secretHash, ...fields }).returning();
  if (!row) throw new Error("insert into edge.api_keys returned no row");
  return { row, fullKey: key.fullKey };
}

function tenantPageToken(lastId: string): string {
  return Buffer.from(`t:${lastId}`, "utf8").toString("base64url");
}

function afterTenantId(pageToken: string): string | undefined {
  if (pageToken === "") return undefined;
  const decoded = Buffer.from(limitPageToken(pageToken, "page_token"), "base64url").toString("utf8");
  if (!decoded.startsWith("t:")) throw invalidArgument("page_token", "is not a token from a previous ListTenants response");
  return decoded.slice(2);
}

export function adminImpl(deps: {
  db: Db;
  config: Pick<Config, "rateLimitPerSecond" | "rateLimitBurst">;
  apiKeys: ApiKeyAuthenticator;
}): ServiceImpl<typeof AdminService> {
  const { db, config } = deps;

  async function requireTenant(tenantId: string): Promise<void> {
    const [row] = await db.select({ id: tenants.id }).from(tenants).where(eq(tenants.id, requireId(tenantId, "tenant_id")));
    if (!row) throw notFound(`tenant ${tenantId}`);
  }

  return {
    async createTenant(request) {
      const name = requireText(request.name, "name", 128);
      const { tenant, key } = await transact(db, async (tx) => {
        const [tenant] = await tx.insert(tenants).values({ id: newTenantId(), name, live: request.live }).returning();
        if (!tenant) throw new Error("insert into edge.tenants returned no row");
        const key = await insertKey(tx, {
          tenantId: tenant.id,
          scope: SCOPE.readWrite,
          label: "first key",
          rateLimitPerSecond: null,
          rateLimitBurst: null,
        });
        return { tenant, key };
      });
      return { tenant: tenantMessage(tenant), apiKey: apiKeyMessage(key.row, config), apiKeySecret: key.fullKey };
    },

    async listTenants(request) {
      const pageSize = requirePageSize(request.pageSize, 100, TENANT_PAGE_DEFAULT);
      const after = afterTenantId(request.pageToken);
      const rows = await db
        .select()
        .from(tenants)
        .where(after === undefined ? undefined : gt(tenants.id, after))
        .orderBy(asc(tenants.id))
        .limit(pageSize + 1);
      const page = rows.slice(0, pageSize);
      const last = page[page.length - 1];
      return {
        tenants: page.map(tenantMessage),
        nextPageToken: rows.length > pageSize && last ? tenantPageToken(last.id) : "",
      };
    },

    async createApiKey(request) {
      const tenantId = requireId(request.tenantId, "tenant_id");
      const scope = requireEnum(request.scope, "scope", ApiKeyScope) === ApiKeyScope.READ_WRITE ? SCOPE.readWrite : SCOPE.readOnly;
      const label = limitText(request.label, "label", 128);
      const rateLimitPerSecond = rateOverride(request.rateLimitPerSecond, "rate_limit_per_second");
      const rateLimitBurst = rateOverride(request.rateLimitBurst, "rate_limit_burst");
      await requireTenant(tenantId);
      const key = await transact(db, (tx) => insertKey(tx, { tenantId, scope, label, rateLimitPerSecond, rateLimitBurst }));
      return { apiKey: apiKeyMessage(key.row, config), apiKeySecret: key.fullKey };
    },

    async revokeApiKey(request) {
      const keyId = requireId(request.apiKeyId, "api_key_id");
      // Revoking again keeps the first revocation time: idempotent.
      const [row] = await transact(db, (tx) =>
        tx
          .update(apiKeys)
          .set({ revokedAt: sql`coalesce(${apiKeys.revokedAt}, now())` })
          .where(eq(apiKeys.id, keyId))
          .returning(),
      );
      if (!row) throw notFound(`API key ${keyId}`);
      deps.apiKeys.forget(keyId);
      return { apiKey: apiKeyMessage(row, config) };
    },

    async listApiKeys(request) {
      const tenantId = requireId(request.tenantId, "tenant_id");
      await requireTenant(tenantId);
      const rows = await db
        .select()
        .from(apiKeys)
        .where(eq(apiKeys.tenantId, tenantId))
        .orderBy(asc(apiKeys.createdAt), asc(apiKeys.id));
      return { apiKeys: rows.map((row) => apiKeyMessage(row, config)) };
    },
  };
}
