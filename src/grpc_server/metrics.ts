/**
 * gRPC call metrics for the daemon: one server interceptor counts every
 * call by method and status code and records its latency, from the call's
 * first frame until its status is sent (or the client cancels it, counted
 * as CANCELLED). Handlers know nothing of it.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import type { Buffer } from "node:buffer";
import { metrics } from "../metrics.ts";

const calls = metrics.counter(
  "tvix_grpc_server_handled_total",
  "gRPC calls completed, by method and status code",
  ["grpc_method", "grpc_code"],
);
const latency = metrics.histogram(
  "tvix_grpc_server_handling_seconds",
  "time from a gRPC call's start until its status was sent, by method and status code",
  ["grpc_method", "grpc_code"],
);

/** Counts each call and records its latency under its method and status code. */
export const metricsInterceptor: grpc.ServerInterceptor = (descriptor, call) => {
  const start = performance.now();
  let done = false;
  const record = (code: number) => {
    if (done) return;
    done = true;
    const codeText = grpc.status[code] ?? String(code);
    calls.labels(descriptor.path, codeText).inc();
    latency.labels(descriptor.path, codeText).observe((performance.now() - start) / 1000);
  };
  return new grpc.ServerInterceptingCall(call, {
    start: (next) =>
      next(
        new grpc.ServerListenerBuilder().withOnCancel(() => record(grpc.status.CANCELLED))
          .build(),
      ),
    sendStatus: (status, next) => {
      record(status.code ?? grpc.status.UNKNOWN);
      next(status);
    },
  });
};

const receivedBytes = metrics.counter(
  "tvix_grpc_server_received_bytes_total",
  "bytes of gRPC request messages received (before decoding), by method",
  ["grpc_method"],
);
const sentBytes = metrics.counter(
  "tvix_grpc_server_sent_bytes_total",
  "bytes of gRPC response messages sent (after encoding), by method",
  ["grpc_method"],
);

/**
 * `definition` with every method's message (de)serializers wrapped to add
 * up the bytes received and sent, by method: the only place that sees the
 * encoded messages of every call.
 */
export function withByteCounts<D extends grpc.ServiceDefinition>(definition: D): D {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(definition)) {
    const received = receivedBytes.labels(method.path);
    const sent = sentBytes.labels(method.path);
    out[name] = {
      ...method,
      requestDeserialize: (buf: Buffer) => {
        received.inc(buf.length);
        return method.requestDeserialize(buf);
      },
      responseSerialize: (value: unknown) => {
        const buf = method.responseSerialize(value);
        sent.inc(buf.length);
        return buf;
      },
    };
  }
  return out as D;
}
