// How a codebase that uses @grpc/grpc-js calls Cowrie: a grpc-js service definition built from
// the committed protobuf-es descriptors, with no .proto loading and no extra code generation.
// Requests and responses are protobuf-es messages. Quoted in the README; used by the tests and
// `npm run bench:rpc`. Only types come from grpc-js, so the services do not depend on it.
//
//   const Wallets = grpc.makeGenericClientConstructor(grpcServiceDefinition(WalletsService), "WalletsService");
//   const wallets = new Wallets("127.0.0.1:8080", grpc.credentials.createInsecure());
//   wallets.getWallet(create(GetWalletRequestSchema, { walletId }), { deadline: Date.now() + 2000 }, callback);
import { fromBinary, toBinary, type DescService, type Message } from "@bufbuild/protobuf";
import type { MethodDefinition, ServiceDefinition } from "@grpc/grpc-js";

export function grpcServiceDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, MethodDefinition<Message, Message>> = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      originalName: method.name,
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: (message) => Buffer.from(toBinary(method.input, message)),
      requestDeserialize: (bytes) => fromBinary(method.input, bytes),
      responseSerialize: (message) => Buffer.from(toBinary(method.output, message)),
      responseDeserialize: (bytes) => fromBinary(method.output, bytes),
    };
  }
  return definition as ServiceDefinition;
}
