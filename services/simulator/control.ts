// A typed client of the simulator's control API, for tests and benchmarks that script outages:
//   const sim = simulatorControl(url);
//   await sim.configure("paystack", { outage: "unavailable" });
//   const charges = await sim.records({ gateway: "paystack", operation: "charge" });
//   await sim.importRecords([{ gateway: "paystack", operation: "charge", reference, amountMinor: "2500", currency: "NGN", status: "succeeded" }]);
import { SIMULATED_GATEWAYS, type GatewaySettings, type RecordFilter, type SettingsPatch, type SimulatedGateway } from "./core.js";
import type { RecordView } from "./simulator.js";

export type { GatewaySettings, RecordFilter, RecordView, SettingsPatch, SimulatedGateway };

export interface SimulatorControl {
  /** Every gateway's current settings. */
  gateways(): Promise<Record<SimulatedGateway, GatewaySettings>>;
  /** Merges a partial update into one gateway's settings; rejects naming the bad field. */
  configure(gateway: SimulatedGateway, settings: SettingsPatch): Promise<GatewaySettings>;
  /** Clears every record and returns the settings to the simulator's starting ones. */
  reset(): Promise<void>;
  /** Records, oldest first, optionally filtered. */
  records(filter?: RecordFilter): Promise<RecordView[]>;
  /** Adds records with the outcome given (no decision, no webhook): a gateway with history, or a mismatch. */
  importRecords(records: readonly ImportRecord[]): Promise<number>;
}

/** One record for importRecords; a refund names its charge's reference. */
export interface ImportRecord {
  readonly gateway: SimulatedGateway;
  readonly operation: "charge" | "payout" | "refund";
  readonly reference: string;
  /** Minor units as a decimal string. */
  readonly amountMinor: string;
  readonly currency: string;
  readonly status: "succeeded" | "failed" | "pending";
  readonly parentReference?: string;
}

const CONTROL_TIMEOUT_MS = 5_000;
const IMPORT_CHUNK = 5_000;

/**
 * The variables that point the Router's connectors at a simulator serving at `url`
 * (COWRIE_PAYSTACK_URL and the others). Set, they also keep `services/main.ts` from spawning one.
 */
export function simulatorGatewayEnv(url: string): Record<string, string> {
  return Object.fromEntries(SIMULATED_GATEWAYS.map((gateway) => [`COWRIE_${gateway.toUpperCase()}_URL`, `${url}/${gateway}`]));
}

export function simulatorControl(url: string): SimulatorControl {
  const base = url.replace(/\/+$/, "");
  async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(CONTROL_TIMEOUT_MS),
    });
    const answer = (await response.json()) as T & { error?: string };
    if (!response.ok) throw new Error(`simulator ${method} ${path}: ${response.status} ${answer.error ?? ""}`);
    return answer;
  }
  return {
    gateways: () => call("GET", "/_sim/gateways"),
    configure: (gateway, settings) => call("PUT", `/_sim/gateways/${gateway}`, settings),
    reset: async () => {
      await call("POST", "/_sim/reset");
    },
    importRecords: async (records) => {
      // The simulator takes 5,000 records a request (its bodies are capped at 1 MiB).
      let imported = 0;
      for (let start = 0; start < records.length; start += IMPORT_CHUNK) {
        imported += (await call<{ imported: number }>("POST", "/_sim/records", { records: records.slice(start, start + IMPORT_CHUNK) })).imported;
      }
      return imported;
    },
    records: async (filter = {}) => {
      const query = new URLSearchParams(Object.entries(filter).filter((entry): entry is [string, string] => entry[1] !== undefined));
      return (await call<{ records: RecordView[] }>("GET", `/_sim/records?${query}`)).records;
    },
  };
}
