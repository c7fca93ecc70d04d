/**
 * Child process for pathinfo_delete_durable_test.ts: stores a PathInfo in
 * the SQLite database FILE, writes "put", deletes it, writes "deleted",
 * calls `sync()`, writes "synced", and only then closes the database
 * (closing checkpoints the log, which would make the deletion durable
 * anyway).
 *
 * Usage: deno run -A pathinfo_delete_child.ts FILE
 */
import { pathInfoServiceFromUrl } from "../../src/store/pathinfo/from_url.ts";
import { StorePath } from "../../src/store/store_path.ts";
import { pathInfoWithNarinfo } from "./pathinfo_fixtures.ts";

const te = new TextEncoder();
const service = await pathInfoServiceFromUrl(`sqlite://${Deno.args[0]}`);
const info = pathInfoWithNarinfo();
await service.put(info);
const digest = StorePath.parseBasenameBytes(
  info.node!.node!.value.name,
).digest;
Deno.stdout.writeSync(te.encode("put\n"));
if (!await service.delete?.(digest)) throw new Error("nothing deleted");
Deno.stdout.writeSync(te.encode("deleted\n"));
await service.sync?.();
Deno.stdout.writeSync(te.encode("synced\n"));
await service.close();
