// Risk's feedback consumer: how payments ended, heard from the Router's events, feeds the failed
// streak and the learned profile. The event's id goes into the inbox in the consumer's
// transaction, and counters.recordOutcome is itself idempotent per payment in Redis, so a
// redelivered event changes nothing; while Redis is away the event is retried after growing
// delays and, if it never comes back, parked for an operator.
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { PaymentStatusChangedSchema, type Envelope } from "../../gen/cowrie/events/v1/events_pb.js";
import { PaymentStatus } from "../../gen/cowrie/router/v1/router_pb.js";
import { startEventConsumer, type ConsumerDefinition, type EventConsumer } from "../runtime/events.js";
import type { ServiceContext } from "../runtime/service.js";
import type { Counters } from "./counters.js";
import { inbox, parked } from "./schema.js";

export const FEEDBACK_CONSUMER: ConsumerDefinition = { name: "risk.feedback", bindingKeys: ["payment.succeeded", "payment.failed"] };

export function startFeedbackConsumer(context: ServiceContext, counters: Counters): Promise<EventConsumer> {
  return startEventConsumer({
    ...FEEDBACK_CONSUMER,
    namespace: context.config.brokerNamespace,
    broker: context.broker,
    db: context.database.db,
    tables: { inbox, parked },
    log: context.log,
    handle: async (_tx, events) => {
      for (const { event } of events) await recordOutcome(counters, event);
    },
  });
}

async function recordOutcome(counters: Counters, event: Envelope): Promise<void> {
  const change = event.data ? anyUnpack(event.data, PaymentStatusChangedSchema) : undefined;
  const payment = change?.payment;
  if (!payment) throw new Error(`event ${event.id} (${event.type}) carries no payment`);
  // Only payments Risk evaluated have counters to update.
  if (!payment.risk || payment.risk.decision === "") return;
  const result = await counters.recordOutcome(payment.tenantId, payment.id, payment.risk.userId, payment.status === PaymentStatus.SUCCEEDED);
  // A payment evaluated for another user is a contradiction to show an operator, not to retry forever.
  if (result.kind === "user_mismatch") throw new Error(`payment ${payment.id} was evaluated for another user than ${payment.risk.userId}`);
}
