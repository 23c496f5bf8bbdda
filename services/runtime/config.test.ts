import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as path from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { ConfigError, loadConfig, serviceUrl } from "./config.js";

const root = path.resolve(import.meta.dirname, "../..");

describe("loadConfig()", () => {
  it("gives every variable its default on an empty environment", () => {
    const config = loadConfig({});
    assert.equal(config.edgePort, 8080);
    assert.equal(config.ledgerPort, 50051);
    assert.equal(config.databaseUrl, undefined);
    assert.equal(serviceUrl(config, "ledger"), "http://127.0.0.1:50051");
  });

  const bad: [Record<string, string>, string, RegExp][] = [
    [{ COWRIE_LEDGER_PORT: "abc" }, "COWRIE_LEDGER_PORT", /integer between 1 and 65535, got 'abc'/],
    [{ COWRIE_EDGE_PORT: "70000" }, "COWRIE_EDGE_PORT", /between 1 and 65535/],
    [{ DATABASE_URL: "mysql://x" }, "DATABASE_URL", /postgres/],
    [{ REDIS_URL: "not a url" }, "REDIS_URL", /must be a URL/],
    [{ COWRIE_LOG_LEVEL: "loud" }, "COWRIE_LOG_LEVEL", /one of/],
    [{ COWRIE_DEADLINE_DEFAULT_MS: "40000", COWRIE_DEADLINE_MAX_MS: "30000" }, "COWRIE_DEADLINE_DEFAULT_MS", /must not exceed/],
  ];
  for (const [env, variable, problem] of bad) {
    it(`rejects ${JSON.stringify(env)} naming ${variable}`, () => {
      assert.throws(() => loadConfig(env), (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.equal(error.variable, variable);
        assert.match(error.message, new RegExp(`^${variable}: `));
        assert.match(error.message, problem);
        return true;
      });
    });
  }

  it("keeps passwords out of the message", () => {
    assert.throws(() => loadConfig({ DATABASE_URL: "http://user:secret@host/db" }), (error: Error) => !error.message.includes("secret"));
  });
});

describe("npm start with a bad value", () => {
  it("exits non-zero with one line naming the variable", async () => {
    const result = await promisify(execFile)(process.execPath, ["--import", "tsx", "services/main.ts"], {
      cwd: root,
      env: { ...process.env, COWRIE_WALLET_PORT: "sixty" },
    }).then(
      () => assert.fail("start-up should have failed"),
      (error: { code: number; stderr: string }) => error,
    );
    assert.equal(result.code, 2);
    const lines = result.stderr.trim().split("\n");
    assert.equal(lines.length, 1, result.stderr);
    assert.match(lines[0] as string, /^cowrie: configuration error: COWRIE_WALLET_PORT: must be an integer/);
  });
});
