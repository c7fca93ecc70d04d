/**
 * How hard the services on top of an object store should drive it. A local
 * filesystem answers in microseconds and a few chunks in flight saturate
 * it; a store across the network answers each request after a round trip,
 * and only many requests at once fill the pipe. A store says so through an
 * optional `tuning` property; the blob service reads it with
 * {@linkcode tuningOf} for the defaults it was not given explicitly.
 *
 * @module
 */
import type { ObjectStore } from "./store.ts";

/** Concurrency hints of an object store (any may be absent: the service's own default). */
export interface ObjectStoreTuning {
  /** Chunks being encoded or uploaded at once per blob writer. */
  maxInflightChunks?: number;
  /** Their uncompressed bytes at once per blob writer. */
  maxInflightBytes?: number;
  /** Chunks fetched ahead of the one a blob reader is yielding. */
  readAhead?: number;
  /**
   * Every request is a network round trip: the blob service says so
   * (`BlobService.remote`), and an import keeps as many uploads in flight
   * as it would to a daemon.
   */
  remote?: boolean;
}

/** The store's hints, `{}` if it has none. */
export function tuningOf(store: ObjectStore): ObjectStoreTuning {
  return (store as { tuning?: ObjectStoreTuning }).tuning ?? {};
}
