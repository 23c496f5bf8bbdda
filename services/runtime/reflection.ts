// gRPC server reflection, v1 and v1alpha (the same messages under two package names), so that
// grpcurl, buf curl and Postman can list a service's methods and call them without .proto files.
// The descriptors come from the generated code, which embeds each file's FileDescriptorProto.
import type { ConnectRouter } from "@connectrpc/connect";
import { create, toBinary, type DescFile, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";

/** Every service a port serves, as reflection lists it: the service's own plus health and reflection. */
export function reflectedServices(own: DescService[]): DescService[] {
  return [...own, Health, v1.ServerReflection, v1alpha.ServerReflection];
}

interface Index {
  serviceNames: string[];
  files: Map<string, DescFile>;
  /** Fully-qualified symbol (message, enum, service, method, field) to the file declaring it. */
  symbols: Map<string, DescFile>;
}

function buildIndex(services: DescService[]): Index {
  const files = new Map<string, DescFile>();
  const visit = (file: DescFile): void => {
    if (files.has(file.proto.name)) return;
    files.set(file.proto.name, file);
    for (const dependency of file.dependencies) visit(dependency);
  };
  for (const service of services) visit(service.file);
  const symbols = new Map<string, DescFile>();
  for (const file of files.values()) {
    for (const service of file.services) {
      symbols.set(service.typeName, file);
      for (const method of service.methods) symbols.set(`${service.typeName}.${method.name}`, file);
    }
    for (const enumeration of file.enums) symbols.set(enumeration.typeName, file);
    const addMessages = (messages: DescFile["messages"]): void => {
      for (const message of messages) {
        symbols.set(message.typeName, file);
        for (const field of message.fields) symbols.set(`${message.typeName}.${field.name}`, file);
        for (const nested of message.nestedEnums) symbols.set(nested.typeName, file);
        addMessages(message.nestedMessages);
      }
    };
    addMessages(file.messages);
  }
  return { serviceNames: services.map((service) => service.typeName), files, symbols };
}

/** The file and everything it imports, the file itself first. */
function withDependencies(file: DescFile): Uint8Array[] {
  const seen = new Set<string>();
  const out: Uint8Array[] = [];
  const visit = (current: DescFile): void => {
    if (seen.has(current.proto.name)) return;
    seen.add(current.proto.name);
    out.push(toBinary(FileDescriptorProtoSchema, current.proto));
    for (const dependency of current.dependencies) visit(dependency);
  };
  visit(file);
  return out;
}

type Request = v1.ServerReflectionRequest;
type Answer = { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

const NOT_FOUND = 5;
const UNIMPLEMENTED = 12;

function answer(index: Index, request: Request): Answer {
  const notFound = (what: string): Answer => ({ case: "errorResponse", value: { errorCode: NOT_FOUND, errorMessage: `${what} not found` } });
  const files = (file: DescFile | undefined, what: string): Answer =>
    file ? { case: "fileDescriptorResponse", value: { fileDescriptorProto: withDependencies(file) } } : notFound(what);
  const message = request.messageRequest;
  switch (message.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: index.serviceNames.map((name) => ({ name })) } };
    case "fileByFilename":
      return files(index.files.get(message.value), `file ${message.value}`);
    case "fileContainingSymbol":
      return files(index.symbols.get(message.value.replace(/^\./, "")), `symbol ${message.value}`);
    case "fileContainingExtension":
      return notFound(`extension ${message.value.extensionNumber} of ${message.value.containingType}`);
    case "allExtensionNumbersOfType":
      // Cowrie's contracts declare no extensions: an empty list for known types.
      return index.symbols.has(message.value)
        ? { case: "allExtensionNumbersResponse", value: { baseTypeName: message.value, extensionNumber: [] } }
        : notFound(`type ${message.value}`);
    default:
      return { case: "errorResponse", value: { errorCode: UNIMPLEMENTED, errorMessage: "unsupported reflection request" } };
  }
}

export function registerReflection(router: ConnectRouter, services: DescService[]): void {
  const index = buildIndex(reflectedServices(services));
  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        yield create(v1.ServerReflectionResponseSchema, {
          validHost: request.host,
          originalRequest: request,
          messageResponse: answer(index, request),
        });
      }
    },
  });
  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        // v1alpha messages have the same fields and numbers as v1, so they convert losslessly.
        const asV1 = request as unknown as Request;
        yield create(v1alpha.ServerReflectionResponseSchema, {
          validHost: request.host,
          originalRequest: request,
          messageResponse: answer(index, asV1) as v1alpha.ServerReflectionResponse["messageResponse"],
        });
      }
    },
  });
}
