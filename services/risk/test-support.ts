// Cleanup for Risk's tests and benchmark: the keys they leave in the shared Redis (profiles and
// known beneficiaries would otherwise stay for 180 days).
import { Redis } from "ioredis";
import { TEST_REDIS_URL } from "../runtime/testing.js";

/** Deletes every key matching a SCAN pattern (in batches, never KEYS). */
export async function deleteRedisKeys(pattern: string, url = TEST_REDIS_URL): Promise<void> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1, connectTimeout: 2_000 });
  redis.on("error", () => {});
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1_000);
      cursor = next;
      if (keys.length > 0) await redis.unlink(...keys);
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
}
