// How a public or admin RPC is put together, so that no handler can skip the checks: the only way
// to serve a public service is `publicService`, whose argument must name every method of the
// service (a missing one does not compile) as a `read` or a `mutate` endpoint, and which wraps
// each one in the same order:
//   API key (UNAUTHENTICATED) → rate limit (RESOURCE_EXHAUSTED) → scope (PERMISSION_DENIED)
//   → for mutations: Idempotency-Key header and fields (INVALID_ARGUMENT, nothing written yet)
//   → idempotent execution (idempotency.ts).
// AdminService goes through `operatorService`, which checks the operator token on every method.
import { create, type DescMessage, type DescMethod, type DescService, type Message, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { requireIdempotencyKey } from "../runtime/validate.js";
import { requireOperator, type ApiKeyAuthenticator } from "./auth.js";
import { IDEMPOTENCY_KEY_HEADER, type IdempotencyStore, type Mutation } from "./idempotency.js";
import type { RateLimiter } from "./rate-limit.js";

/** What a handler knows about its caller: the tenant, from the API key, never from the request. */
export interface TenantCall {
  readonly tenantId: string;
}

/** A mutation also gets the key it passes to the internal service (see downstreamKeyFor). */
export interface MutationCall extends TenantCall {
  readonly downstreamKey: string;
}

const ENDPOINT = Symbol("edge endpoint");

export interface ReadEndpoint<I, O> {
  readonly [ENDPOINT]: "read";
  handle(request: I, call: TenantCall): Promise<O>;
}

/**
 * `prepare` validates the request and throws INVALID_ARGUMENT naming the public field, before
 * anything is written; it returns the work to run once the Idempotency-Key is claimed. The
 * completer calls it again with the stored request, so it must be deterministic.
 */
export interface MutateEndpoint<I, O> {
  readonly [ENDPOINT]: "mutate";
  prepare(request: I): (call: MutationCall) => Promise<O>;
}

export type Endpoint<I, O> = ReadEndpoint<I, O> | MutateEndpoint<I, O>;

/** Read-only RPC: any valid API key may call it. */
export function read<I, O>(handle: (request: I, call: TenantCall) => Promise<O>): ReadEndpoint<I, O> {
  return { [ENDPOINT]: "read", handle };
}

/** Mutating RPC: needs a read-write key and the Idempotency-Key header. */
export function mutate<I, O>(prepare: (request: I) => (call: MutationCall) => Promise<O>): MutateEndpoint<I, O> {
  return { [ENDPOINT]: "mutate", prepare };
}

type MethodInput<S extends DescService, K extends keyof S["method"]> = S["method"][K] extends { input: infer I extends DescMessage } ? MessageShape<I> : never;
type MethodOutput<S extends DescService, K extends keyof S["method"]> = S["method"][K] extends { output: infer O extends DescMessage } ? MessageInitShape<O> : never;

/** One endpoint for every method of the service, no more, no fewer. */
export type Endpoints<S extends DescService> = {
  [K in keyof S["method"]]: Endpoint<MethodInput<S, K>, MethodOutput<S, K>>;
};

export interface PublicGuards {
  readonly apiKeys: ApiKeyAuthenticator;
  readonly rateLimiter: RateLimiter;
  readonly idempotency: IdempotencyStore;
}

type AnyEndpoint = Endpoint<Message, MessageInitShape<DescMessage>>;
type UnaryHandler = (request: Message, context: HandlerContext) => Promise<MessageInitShape<DescMessage>>;

/** The implementation of a public service, every method behind the checks above. */
export function publicService<S extends DescService>(service: S, guards: PublicGuards, endpoints: Endpoints<S>): ServiceImpl<S> {
  const impl: Record<string, UnaryHandler> = {};
  for (const method of service.methods) {
    const endpoint = (endpoints as Record<string, AnyEndpoint | undefined>)[method.localName];
    if (!endpoint || method.methodKind !== "unary") {
      throw new Error(`${service.typeName}/${method.name} has no unary endpoint`);
    }
    impl[method.localName] = endpoint[ENDPOINT] === "read"
      ? readHandler(guards, endpoint)
      : mutateHandler(guards, method, endpoint);
  }
  return impl as unknown as ServiceImpl<S>;
}

function readHandler(guards: PublicGuards, endpoint: ReadEndpoint<Message, MessageInitShape<DescMessage>>): UnaryHandler {
  return async (request, context) => {
    const caller = await guards.apiKeys.authenticate(context.requestHeader);
    await guards.rateLimiter.take(caller);
    return endpoint.handle(request, { tenantId: caller.tenantId });
  };
}

function mutateHandler(
  guards: PublicGuards,
  method: DescMethod,
  endpoint: MutateEndpoint<Message, MessageInitShape<DescMessage>>,
): UnaryHandler {
  const mutation: Mutation = {
    method,
    async execute(request, call) {
      const work = endpoint.prepare(request);
      return create(method.output, await work(call));
    },
  };
  guards.idempotency.register(mutation);
  return async (request, context) => {
    const caller = await guards.apiKeys.authenticate(context.requestHeader);
    await guards.rateLimiter.take(caller);
    if (!caller.canWrite) {
      throw new ConnectError(`API key ${caller.keyId} is read-only; ${method.name} needs a read-write key`, Code.PermissionDenied);
    }
    const key = requireIdempotencyKey(context.requestHeader.get(IDEMPOTENCY_KEY_HEADER), "Idempotency-Key header");
    // Validate now: a bad request must not leave an idempotency record behind.
    const work = endpoint.prepare(request);
    const validated: Mutation = {
      method,
      // The live call runs the work already prepared; the completer goes through `mutation`.
      execute: async (_request, call) => create(method.output, await work(call)),
    };
    return guards.idempotency.run({ mutation: validated, tenantId: caller.tenantId, apiKeyId: caller.keyId, key, request, responseHeader: context.responseHeader });
  };
}

/** AdminService's implementation with the operator token checked before every method. */
export function operatorService<S extends DescService>(service: S, operatorToken: string, impl: ServiceImpl<S>): ServiceImpl<S> {
  const guarded: Record<string, UnaryHandler> = {};
  for (const method of service.methods) {
    const handler = (impl as unknown as Record<string, UnaryHandler | undefined>)[method.localName];
    if (!handler || method.methodKind !== "unary") throw new Error(`${service.typeName}/${method.name} has no unary handler`);
    guarded[method.localName] = async (request, context) => {
      requireOperator(context.requestHeader, operatorToken);
      return handler(request, context);
    };
  }
  return guarded as unknown as ServiceImpl<S>;
}
