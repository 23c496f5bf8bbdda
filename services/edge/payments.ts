// The public PaymentsService: validates the public request, then calls the internal
// RouterService with the tenant of the API key. The Router decides payments and records declines
// as FAILED payments; gateway payments (PAY_IN, PAYOUT) it accepts and works in the background.
import type { Client } from "@connectrpc/connect";
import { PaymentKind, PaymentStatus, type PaymentsService } from "../../gen/cowrie/edge/v1/payments_pb.js";
import { PaymentKind as InternalPaymentKind, type RouterService } from "../../gen/cowrie/router/v1/router_pb.js";
import { invalidArgument } from "../runtime/errors.js";
import { limitText, optionalId, requireId, requirePageSize } from "../runtime/validate.js";
import { mutate, read, type Endpoints } from "./endpoints.js";
import {
  limitPageToken,
  requireNonNegativeMinor,
  requireTimeRange,
} from "./fields.js";
import { validatePaymentFields, validatePayer, type CreatedKind } from "../router/instrument.js";
import { optionalEnum } from "../runtime/validate.js";
import { publicPayment } from "./mapping.js";

/**
 * `waiting` reaches the same Router for payments created with wait_for_outcome, which can last
 * their whole deadline: in a lane of their own they cannot take the slots of every other call.
 */
export function paymentsEndpoints(router: Client<typeof RouterService>, waiting: Client<typeof RouterService>): Endpoints<typeof PaymentsService> {
  return {
    createPayment: mutate((request) => {
      const kind = optionalEnum(request.kind, "kind", PaymentKind) || PaymentKind.INTERNAL;
      if (kind === PaymentKind.REFUND) throw invalidArgument("kind", "refunds are made with RefundPayment");
      const { amountMinor, currency, sourceWalletId, destinationWalletId, feeMinor, reference, instrument } =
        validatePaymentFields(request, kind as number as CreatedKind);
      // Checked here too, so bad input never takes an idempotency key; the Router fills defaults.
      validatePayer(request, "");
      return async ({ tenantId, downstreamKey }) => {
        const response = await (request.waitForOutcome ? waiting : router).createPayment({
          tenantId,
          idempotencyKey: downstreamKey,
          kind: kind as number as InternalPaymentKind,
          amountMinor,
          currency,
          sourceWalletId,
          destinationWalletId,
          feeMinor,
          reference,
          paymentMethod: instrument?.paymentMethod ?? "",
          customerEmail: instrument?.customerEmail ?? "",
          country: instrument?.country ?? "",
          bankAccount: instrument?.bankAccount,
          waitForOutcome: request.waitForOutcome,
          userId: request.userId,
          deviceId: request.deviceId,
          ipAddress: request.ipAddress,
        });
        return { payment: publicPayment(response.payment), replayed: response.replayed };
      };
    }),

    getPayment: read(async (request, { tenantId }) => {
      const paymentId = requireId(request.paymentId, "payment_id");
      const response = await router.getPayment({ tenantId, paymentId });
      return { payment: publicPayment(response.payment) };
    }),

    listPayments: read(async (request, { tenantId }) => {
      const status = optionalEnum(request.status, "status", PaymentStatus);
      const kind = optionalEnum(request.kind, "kind", PaymentKind);
      const walletId = optionalId(request.walletId, "wallet_id");
      requireTimeRange(request.createdFrom, request.createdTo, "created_from", "created_to");
      const pageSize = requirePageSize(request.pageSize, 100);
      const pageToken = limitPageToken(request.pageToken, "page_token");
      const response = await router.listPayments({
        tenantId,
        status,
        kind,
        walletId,
        createdFrom: request.createdFrom,
        createdTo: request.createdTo,
        pageSize,
        pageToken,
      });
      return {
        payments: response.payments.map((payment) => publicPayment(payment)).filter((payment) => payment !== undefined),
        nextPageToken: response.nextPageToken,
      };
    }),

    refundPayment: mutate((request) => {
      const paymentId = requireId(request.paymentId, "payment_id");
      const amountMinor = requireNonNegativeMinor(request.amountMinor, "amount_minor");
      const reason = limitText(request.reason, "reason", 128);
      return async ({ tenantId, downstreamKey }) => {
        const response = await router.refundPayment({ tenantId, idempotencyKey: downstreamKey, paymentId, amountMinor, reason });
        return { refund: publicPayment(response.refund), payment: publicPayment(response.payment), replayed: response.replayed };
      };
    }),
  };
}
