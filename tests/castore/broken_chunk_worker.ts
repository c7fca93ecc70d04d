/**
 * A chunk Worker module that fails while loading, as one would where
 * Workers cannot run it; used by `chunk_pool_test.ts`.
 *
 * @module
 */
throw new Error("this Worker module cannot load");
