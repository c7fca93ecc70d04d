/**
 * gRPC call metrics for the daemon: one server interceptor counts every
 * call by method and status code and records its latency, from the call's
 * first frame until its status is sent (or the client cancels it, counted
 * as CANCELLED). Handlers know nothing of it.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
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
