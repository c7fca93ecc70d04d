/**
 * The standard gRPC health service, `grpc.health.v1.Health` (Check and
 * Watch), so load balancers and orchestrators can probe the daemon.
 *
 * Every service the daemon serves, and `""` (the server as a whole), is
 * SERVING until {@linkcode HealthService.shutDown}: then all of them turn
 * NOT_SERVING, Watch streams receive that and are ended, and the server
 * stops listening afterwards (docs/architecture.md#grpc_server).
 *
 * The two messages have one field each, so they are encoded by hand
 * instead of generated; the service is therefore not listed by reflection.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Buffer } from "node:buffer";

/** `grpc.health.v1.HealthCheckResponse.ServingStatus`. */
export enum ServingStatus {
  UNKNOWN = 0,
  SERVING = 1,
  NOT_SERVING = 2,
  /** Only sent by Watch, for a service the server does not know. */
  SERVICE_UNKNOWN = 3,
}

/** The service name clients ask about: `grpc.health.v1.Health`. */
export const HEALTH_SERVICE_NAME = "grpc.health.v1.Health";

/** Decodes a `HealthCheckRequest { string service = 1; }`. */
export function decodeHealthCheckRequest(bytes: Uint8Array): { service: string } {
  const reader = new BinaryReader(bytes);
  let service = "";
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) service = reader.string();
    else reader.skip(wireType);
  }
  return { service };
}

/** Encodes a `HealthCheckResponse { ServingStatus status = 1; }`. */
export function encodeHealthCheckResponse(status: ServingStatus): Uint8Array {
  const writer = new BinaryWriter();
  if (status !== ServingStatus.UNKNOWN) writer.tag(1, WireType.Varint).int32(status);
  return writer.finish();
}

type Request = { service: string };

/** The client half of the definition, which the server never uses. */
function servedOnly(): never {
  throw new Error("the health service is only served here, not called");
}

function method(
  name: string,
  responseStream: boolean,
): grpc.MethodDefinition<Request, ServingStatus> {
  return {
    path: `/${HEALTH_SERVICE_NAME}/${name}`,
    requestStream: false,
    responseStream,
    requestSerialize: servedOnly,
    requestDeserialize: (buf: Buffer) => decodeHealthCheckRequest(buf),
    responseSerialize: (s: ServingStatus) => Buffer.from(encodeHealthCheckResponse(s)),
    responseDeserialize: servedOnly,
  };
}

/** The health service definition for `grpc.Server.addService`. */
export const healthServiceDefinition: grpc.ServiceDefinition = {
  check: method("Check", false),
  watch: method("Watch", true),
};

/** Health state of one server, with the handlers that report it. */
export class HealthService {
  readonly #services: Set<string>;
  #serving = true;
  readonly #watchers = new Set<grpc.ServerWritableStream<Request, ServingStatus>>();

  /** Reports `""` and every name in `services` as SERVING. */
  constructor(services: Iterable<string>) {
    this.#services = new Set(["", ...services]);
  }

  #status(service: string): ServingStatus {
    if (!this.#services.has(service)) return ServingStatus.SERVICE_UNKNOWN;
    return this.#serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
  }

  /**
   * Turns every service NOT_SERVING, tells each Watch stream so and ends
   * it (so no open call holds the shutdown up).
   */
  shutDown(): void {
    if (!this.#serving) return;
    this.#serving = false;
    for (const call of this.#watchers) {
      const status = this.#status(call.request.service);
      call.write(status);
      call.end();
    }
    this.#watchers.clear();
  }

  /** The handlers for `grpc.Server.addService`. */
  readonly handlers: grpc.UntypedServiceImplementation = {
    check: (
      call: grpc.ServerUnaryCall<Request, ServingStatus>,
      callback: grpc.sendUnaryData<ServingStatus>,
    ) => {
      const status = this.#status(call.request.service);
      if (status === ServingStatus.SERVICE_UNKNOWN) {
        callback({
          code: grpc.status.NOT_FOUND,
          details: `unknown service ${call.request.service}`,
        });
      } else callback(null, status);
    },
    watch: (call: grpc.ServerWritableStream<Request, ServingStatus>) => {
      call.write(this.#status(call.request.service));
      if (!this.#serving) {
        call.end();
        return;
      }
      // The status only ever changes once (to NOT_SERVING, in shutDown).
      this.#watchers.add(call);
      call.on("cancelled", () => this.#watchers.delete(call));
    },
  };
}
