// A merchant's webhook endpoint for a chaos run (bench/chaos.ts): an HTTP server in the harness,
// registered through the public WebhooksService for every event type ("*"). It verifies each
// delivery's signature, counts the deliveries of every event id (delivery is at least once), and
// answers 500 to the first attempt of a share of the events, so that the dispatcher's retries are
// exercised too.
import { createHash } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, type Http2SessionManager } from "@connectrpc/connect-node";
import { WebhooksService } from "../gen/cowrie/edge/v1/webhooks_pb.js";
import { verifyWebhook } from "../services/edge/webhooks/signature.js";
import type { BenchTenant } from "./support.js";

export interface WebhookReceiver {
  endpointId: string;
  /** When the endpoint existed: events from then on must be delivered. */
  since: Date;
  /** Deliveries received (2xx answered), by event id. */
  received: Map<string, number>;
  /** Deliveries refused on purpose (first attempts of a share of the events). */
  refused: number;
  badSignatures: number;
  close(): Promise<void>;
}

export async function startWebhookReceiver(tenant: BenchTenant, edgeUrl: string, session: Http2SessionManager, refuseShare: number): Promise<WebhookReceiver> {
  let secret = "";
  const state = { received: new Map<string, number>(), refused: 0, badSignatures: 0 };
  const refusedOnce = new Set<string>();
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const body = Buffer.concat(chunks);
      const eventId = String(request.headers["cowrie-event-id"] ?? "");
      const verdict = secret ? verifyWebhook({ secret, signatureHeader: request.headers["cowrie-signature"] as string | undefined, body }) : { ok: false };
      if (!verdict.ok || !eventId) {
        state.badSignatures++;
        response.writeHead(400).end();
        return;
      }
      // A share of events, chosen by their id, fail their first attempt.
      const roll = createHash("sha256").update(eventId).digest().readUInt32BE(0) / 2 ** 32;
      if (roll < refuseShare && !refusedOnce.has(eventId)) {
        refusedOnce.add(eventId);
        state.refused++;
        response.writeHead(500).end();
        return;
      }
      state.received.set(eventId, (state.received.get(eventId) ?? 0) + 1);
      response.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const webhooks = createClient(WebhooksService, createConnectTransport({ baseUrl: edgeUrl, httpVersion: "2", useBinaryFormat: true, sessionManager: session }));
  const created = await webhooks.createWebhookEndpoint(
    { url: `http://127.0.0.1:${port}/cowrie`, eventTypes: ["*"], description: "chaos receiver" },
    { headers: tenant.auth(`setup-webhook-${port}`), timeoutMs: 10_000 },
  );
  secret = created.secret;
  return {
    endpointId: created.endpoint?.id ?? "",
    since: new Date(),
    received: state.received,
    get refused() {
      return state.refused;
    },
    get badSignatures() {
      return state.badSignatures;
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
