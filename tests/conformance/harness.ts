/**
 * Plumbing shared by the conformance suites: how a backend is handed to a
 * suite, and small stream helpers.
 *
 * @module
 */
import { concatBytes } from "../../src/castore/digest.ts";

/** A freshly constructed, empty service plus whatever tears it down. */
export interface ServiceHandle<S> {
  /** The service under test; empty when handed over. */
  service: S;
  /** Closes the service and removes everything the factory created (temp files, servers). */
  cleanup(): Promise<void>;
}

/** Builds one fresh, empty service per test case. */
export type ServiceFactory<S> = () => Promise<ServiceHandle<S>>;

/** Runs `body` against a fresh service and always cleans up. */
export async function withService<S>(
  factory: ServiceFactory<S>,
  body: (service: S) => Promise<void>,
): Promise<void> {
  const { service, cleanup } = await factory();
  try {
    await body(service);
  } finally {
    await cleanup();
  }
}

/**
 * The two factories every SQLite backend is run with: an in-memory database,
 * and a file at `relPath` inside a fresh temp dir (`relPath` may name
 * directories the backend has to create). Cleanup closes the service and
 * removes the temp dir.
 */
export function sqliteFactories<S extends { close(): Promise<void> }>(
  open: (path: string | undefined) => S,
  relPath: string,
): { memory: ServiceFactory<S>; file: ServiceFactory<S> } {
  return {
    memory: () => {
      const service = open(undefined);
      return Promise.resolve({ service, cleanup: () => service.close() });
    },
    file: tempDirFactory((dir) => Promise.resolve(open(`${dir}/${relPath}`))),
  };
}

/**
 * A factory whose service lives in a fresh temp dir: `open(dir)` builds it,
 * cleanup closes it and removes the dir.
 */
export function tempDirFactory<S extends { close(): Promise<void> }>(
  open: (dir: string) => Promise<S>,
  prefix?: string,
): ServiceFactory<S> {
  return async () => {
    const dir = await Deno.makeTempDir({ prefix });
    const service = await open(dir);
    return {
      service,
      cleanup: async () => {
        await service.close();
        await Deno.remove(dir, { recursive: true });
      },
    };
  };
}

/** Runs `fn` with the path of a not yet existing `store.sqlite` in a fresh temp dir, removed afterwards. */
export async function withDbFile(fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(`${dir}/store.sqlite`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Drains an async iterable into an array. */
export async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

/**
 * Drains a byte stream into one array, copying each piece as it arrives
 * (the producer may reuse its buffer).
 */
export async function collectBytes(it: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of it) parts.push(p.slice());
  return concatBytes(parts);
}

/** Concatenates byte pieces. */
export const concat = concatBytes;

/** Whether `fn` rejects (at the call or at a later step); used where either is allowed. */
export async function fails(fn: () => Promise<unknown>): Promise<boolean> {
  try {
    await fn();
    return false;
  } catch {
    return true;
  }
}
